// GRU time loops of the cpu backend (gates r, z, n): per step one BLAS product for the
// hidden-side pre-activations, then one vectorised pass over each row:
//   r, z = sigmoid(x_g + h_g + b_g);  n = tanh(x_n + r * (h_n + b_n));  h' = n + z * (h - n).
// Saved tensors have the reference backend's layout: gates activated r, z, n and
// hidden_n = h_n + b_n, the term r multiplies. The forward splits a step by hidden units
// (unit_split.h; benchmarks/results/epyc-2core-gru-rnn-unit-split-ab).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "blas.h"
#include "cpu_math.h"
#include "gru_rows.h"
#include "input_weight_grads.h"
#include "recurrence_cpu.h"
#include "rows.h"
#include "unit_split.h"
#include "workspace_pool.h"

namespace fusedrnn::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_recurrence_fwd(
    const Tensor& xproj, const std::optional<Tensor>& b_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths_opt, bool reverse, bool save) {
  const auto sizes = check_gru_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths_opt, at::kCPU);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Tensor input_bias = bias_or_zeros(b_ih, 3 * hidden, xproj);
  const Tensor bias = bias_or_zeros(b_hh, 3 * hidden, xproj);
  if (xproj.scalar_type() == at::kBFloat16) {
    return gru_forward_bf16(xproj, input_bias, w_hh, bias, h0, lengths_ptr(sizes.lengths),
                            reverse, save);
  }
  // Without `save`, one step of gates and hidden_n is all the loop needs.
  Tensor gates = WorkspacePool::empty({save ? steps : 1, batch, 3 * hidden}, xproj.options());
  Tensor hidden_n = WorkspacePool::empty({save ? steps : 1, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h of even and odd processed steps
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // Split by hidden units as the LSTM's loop is (unit_split.h): part p's product gives its
  // units' rows of every gate, (B, 3 n).
  const UnitSplit split(batch, 3, hidden);
  Tensor hidden_gates = at::empty({split.parts, batch, 3 * split.chunk}, xproj.options());
  const auto order = time_order(steps, reverse);
  avx512_rows();  // a bad FUSEDRNN_CPU_MATH raises here, before the loop
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "gru_recurrence_fwd_cpu", [&] {
    const int64_t state = batch * hidden;  // elements of one step of y and hidden_n
    const scalar_t* xproj_p = xproj.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* hidden_n_p = hidden_n.data_ptr<scalar_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    const scalar_t* bip = input_bias.data_ptr<scalar_t>();
    scalar_t* hg_p = hidden_gates.data_ptr<scalar_t>();
    const auto products =
        gate_row_products<RecurrentProduct<scalar_t>>(split, w_hh, 3, batch, steps);
    split.run([&](int64_t first, int64_t stride) {
      scalar_t* hp = h_a.data_ptr<scalar_t>();
      scalar_t* hn = h_b.data_ptr<scalar_t>();
      split.steps(order, [&](int64_t /*k*/, int64_t t) {
        const scalar_t* xp = xproj_p + 3 * state * t;
        scalar_t* gp = save ? gates_p + 3 * state * t : gates_p;
        scalar_t* np = save ? hidden_n_p + state * t : hidden_n_p;
        scalar_t* yp = y_p + state * t;
        for (int64_t p = first; p < split.parts; p += stride) {
          const int64_t u0 = split.begin(p), n = split.end(p) - u0;
          scalar_t* hg = hg_p + p * batch * 3 * split.chunk;
          products[p].apply(hg, hp);
          split.for_rows(batch, 3 * n, [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
              const int64_t row = b * hidden + u0, grow = 3 * b * hidden + u0;
              gru_forward_row<scalar_t>(xp + grow, bip + u0, hg + 3 * b * n, gp + grow, bp + u0,
                                        hp + row, np + row, yp + row, hn + row, hidden, n, n);
              if (!is_active(lengths, b, t)) hold_row<scalar_t>(hn + row, hp + row, yp + row, n);
            }
          });
        }
        std::swap(hp, hn);
      });
    });
  });
  const Tensor h_last = order.size() % 2 == 0 ? h_a : h_b;
  if (!save) return {y, h_last, xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_last, gates, hidden_n};
}

namespace {

// The state each active step of a row started from, for the backward: a given h_prev
// (T,B,H) (gru_recurrence_bwd), or the forward's outputs y (T,B,H) one step back in its
// order, h0 (B,H) at the row's first step (gru_bptt: t = 0 forward; reverse, T-1 or the
// row's length - 1; every step before an active one was active).
template <typename scalar_t>
class PreviousStates {
 public:
  explicit PreviousStates(const Tensor& h_prev)
      : h_prev_(h_prev.data_ptr<scalar_t>()), state_(h_prev.size(1) * h_prev.size(2)),
        hidden_(h_prev.size(2)) {}
  PreviousStates(const Tensor& y, const Tensor& h0, const int64_t* lengths, bool reverse)
      : y_(y.data_ptr<scalar_t>()), h0_(h0.data_ptr<scalar_t>()), lengths_(lengths),
        steps_(y.size(0)), state_(y.size(1) * y.size(2)), hidden_(y.size(2)),
        reverse_(reverse) {}

  // Row b's state before step t (H values), t active for b.
  const scalar_t* row(int64_t t, int64_t b) const {
    if (h_prev_ != nullptr) return h_prev_ + t * state_ + b * hidden_;
    const int64_t length = lengths_ == nullptr ? steps_ : std::min(lengths_[b], steps_);
    if (t == (reverse_ ? length - 1 : 0)) return h0_ + b * hidden_;
    return y_ + (reverse_ ? t + 1 : t - 1) * state_ + b * hidden_;
  }

 private:
  const scalar_t* h_prev_ = nullptr;
  const scalar_t* y_ = nullptr;
  const scalar_t* h0_ = nullptr;
  const int64_t* lengths_ = nullptr;
  int64_t steps_ = 0, state_ = 0, hidden_ = 0;
  bool reverse_ = false;
};

// The backward time loop. dgates_in, dgates_hid (T,B,3H) written; dh (B,H) in: the gradient
// of h_n, out: of h0. done(k) runs once the k-th processed step's dgates are written.
template <typename scalar_t, typename Done>
void gru_bwd_loop(const Tensor& grad_y, const Tensor& w_hh,
                  const PreviousStates<scalar_t>& h_prev, const int64_t* lengths,
                  const Tensor& gates, const Tensor& hidden_n, bool reverse, Tensor& dgates_in,
                  Tensor& dgates_hid, Tensor& dh, const Done& done) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  Tensor rec = at::empty_like(dh);  // dgates_hid of the step just processed @ w_hh
  const int64_t state = batch * hidden;  // elements of one step of grad_y, h_prev, hidden_n
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* recp = rec.data_ptr<scalar_t>();
  const scalar_t* grad_y_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  const scalar_t* hidden_n_p = hidden_n.data_ptr<scalar_t>();
  scalar_t* dgates_in_p = dgates_in.data_ptr<scalar_t>();
  scalar_t* dgates_hid_p = dgates_hid.data_ptr<scalar_t>();
  const auto order = time_order(steps, !reverse);
  // Rows active at step `later` take the recurrent gradient and the direct path through
  // that step's z; an inactive step passes dh through unchanged.
  auto carry_from = [&](int64_t later, int64_t b) {
    if (!is_active(lengths, b, later)) return;
    const scalar_t* z = gates_p + 3 * state * later + 3 * b * hidden + hidden;
    gru_carry_row<scalar_t>(dhp + b * hidden, recp + b * hidden, z, hidden);
  };
  RecurrentProduct<scalar_t> recurrent(w_hh, /*transpose=*/false, batch);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t later = k == 0 ? -1 : order[k - 1];  // the step processed just before
    const scalar_t* gy = grad_y_p + state * t;
    const scalar_t* gp = gates_p + 3 * state * t;
    const scalar_t* np = hidden_n_p + state * t;
    scalar_t* dinp = dgates_in_p + 3 * state * t;
    scalar_t* dhidp = dgates_hid_p + 3 * state * t;
    for_rows(batch, 6 * hidden, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * hidden;
        if (later >= 0) carry_from(later, b);
        if (!is_active(lengths, b, t)) {
          std::fill(dinp + 3 * row, dinp + 3 * row + 3 * hidden, scalar_t(0));
          std::fill(dhidp + 3 * row, dhidp + 3 * row + 3 * hidden, scalar_t(0));
          continue;
        }
        add_row<scalar_t>(dhp + row, gy + row, hidden);
        gru_bwd_row<scalar_t>(dhp + row, gp + 3 * row, np + row, h_prev.row(t, b),
                              dinp + 3 * row, dhidp + 3 * row, hidden);
      }
    });
    done(static_cast<int64_t>(k));
    recurrent.apply(recp, dhidp);
  }
  if (steps > 0) {
    for (int64_t b = 0; b < batch; ++b) carry_from(order.back(), b);  // the gradient of h0
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> gru_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h_prev,
    const std::optional<Tensor>& lengths_opt, const Tensor& gates, const Tensor& hidden_n,
    bool reverse) {
  const auto sizes =
      check_gru_bwd(grad_y, grad_h_n, w_hh, h_prev, lengths_opt, gates, hidden_n, at::kCPU);
  if (gates.scalar_type() == at::kBFloat16) {
    return gru_backward_bf16(grad_y, grad_h_n, w_hh, h_prev, lengths_ptr(sizes.lengths), gates,
                             hidden_n, reverse);
  }
  Tensor dgates_in = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dgates_hid = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dh = grad_h_n.clone();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_recurrence_bwd_cpu", [&] {
    gru_bwd_loop<scalar_t>(grad_y, w_hh, PreviousStates<scalar_t>(h_prev),
                           lengths_ptr(sizes.lengths), gates, hidden_n, reverse, dgates_in,
                           dgates_hid, dh, [](int64_t) {});
  });
  return {dgates_in, dgates_hid, dh};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bptt(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const std::optional<Tensor>& lengths_opt,
    const Tensor& y, const Tensor& gates, const Tensor& hidden_n, bool reverse, bool has_bias) {
  const auto sizes =
      check_gru_bwd(grad_y, grad_h_n, w_hh, y, lengths_opt, gates, hidden_n, at::kCPU, "y");
  check_bptt_inputs(x, w_ih, gates, sizes, 3, at::kCPU);
  check_argument(h0, "h0", gates, {sizes.batch, sizes.hidden}, at::kCPU);
  Tensor dgates_in = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dgates_hid = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dh = grad_h_n.clone();
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // One thread runs the loop as fast as a team while its steps are below MKL's threading.
  const bool overlap = sizes.batch * 3 * sizes.hidden * sizes.hidden < UnitSplit::kSplitUpTo;
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_bptt_cpu", [&] {
    InputWeightGrads<scalar_t> grads(
        {x, w_ih, dgates_in, dgates_hid, y, h0, /*shifted=*/true, reverse, has_bias, lengths},
        overlap);
    grads.run([&] {
      gru_bwd_loop<scalar_t>(grad_y, w_hh, PreviousStates<scalar_t>(y, h0, lengths, reverse),
                             lengths, gates, hidden_n, reverse, dgates_in, dgates_hid, dh,
                             [&](int64_t k) { grads.step_done(k); });
    });
    result = {grads.grad_x, grads.grad_w_ih, grads.grad_w_hh, grads.grad_b_ih, grads.grad_b_hh,
              dh};
  });
  return result;
}

}  // namespace fusedrnn::cpu
