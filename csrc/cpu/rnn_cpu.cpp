// Elman RNN time loops of the cpu backend: h' = act(x W_ih^T + b + h W_hh^T), act tanh or
// relu. Per step one BLAS product and one vectorised pass over each row; the backward needs
// only y, since act'(pre) is 1 - y^2 (tanh) or y > 0 (relu). The forward splits a step by
// hidden units (unit_split.h; benchmarks/results/epyc-2core-gru-rnn-unit-split-ab).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "blas.h"
#include "cpu_math.h"
#include "input_weight_grads.h"
#include "recurrence_cpu.h"
#include "rnn_rows.h"
#include "rows.h"
#include "unit_split.h"
#include "workspace_pool.h"

namespace fusedrnn::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor> rnn_recurrence_fwd(const Tensor& xproj,
                                              const std::optional<Tensor>& bias_opt,
                                              const Tensor& w_hh, const Tensor& h0,
                                              const std::optional<Tensor>& lengths_opt,
                                              bool reverse, bool relu) {
  const auto sizes = check_rnn_fwd(xproj, bias_opt, w_hh, h0, lengths_opt, at::kCPU);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Tensor bias = bias_or_zeros(bias_opt, hidden, xproj);
  if (xproj.scalar_type() == at::kBFloat16) {
    return rnn_forward_bf16(xproj, bias, w_hh, h0, lengths_ptr(sizes.lengths), reverse, relu);
  }
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h of even and odd processed steps
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // Split by hidden units as the LSTM's loop is (unit_split.h): part p's product gives its
  // units' h W_hh^T, (B, n).
  const UnitSplit split(batch, 1, hidden);
  Tensor hidden_gates = at::empty({split.parts, batch, split.chunk}, xproj.options());
  const auto order = time_order(steps, reverse);
  avx512_rows();  // a bad FUSEDRNN_CPU_MATH raises here, before the loop
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "rnn_recurrence_fwd_cpu", [&] {
    const int64_t state = batch * hidden;
    const scalar_t* xproj_p = xproj.data_ptr<scalar_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    scalar_t* hg_p = hidden_gates.data_ptr<scalar_t>();
    const auto products =
        gate_row_products<RecurrentProduct<scalar_t>>(split, w_hh, 1, batch, steps);
    split.run([&](int64_t first, int64_t stride) {
      scalar_t* hp = h_a.data_ptr<scalar_t>();
      scalar_t* hn = h_b.data_ptr<scalar_t>();
      split.steps(order, [&](int64_t /*k*/, int64_t t) {
        const scalar_t* xp = xproj_p + state * t;
        scalar_t* yp = y_p + state * t;
        for (int64_t p = first; p < split.parts; p += stride) {
          const int64_t u0 = split.begin(p), n = split.end(p) - u0;
          scalar_t* hg = hg_p + p * batch * split.chunk;
          products[p].apply(hg, hp);
          split.for_rows(batch, n, [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
              const int64_t row = b * hidden + u0;
              rnn_forward_row<scalar_t>(xp + row, hg + b * n, bp + u0, yp + row, hn + row, n,
                                        relu);
              if (!is_active(lengths, b, t)) hold_row<scalar_t>(hn + row, hp + row, yp + row, n);
            }
          });
        }
        std::swap(hp, hn);
      });
    });
  });
  return {y, order.size() % 2 == 0 ? h_a : h_b};
}

namespace {

// The backward time loop. dpre (T,B,H) written; dh (B,H) in: the gradient of h_n, out: of
// h0. done(k) runs once the k-th processed step's dpre is written.
template <typename scalar_t, typename Done>
void rnn_bwd_loop(const Tensor& grad_y, const Tensor& w_hh, const Tensor& y,
                  const int64_t* lengths, bool reverse, bool relu, Tensor& dpre, Tensor& dh,
                  const Done& done) {
  const int64_t steps = y.size(0), batch = y.size(1), hidden = y.size(2);
  Tensor rec = at::empty_like(dh);  // dpre of the step just processed @ w_hh
  const int64_t state = batch * hidden;
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* recp = rec.data_ptr<scalar_t>();
  const scalar_t* grad_y_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* y_p = y.data_ptr<scalar_t>();
  scalar_t* dpre_p = dpre.data_ptr<scalar_t>();
  const auto order = time_order(steps, !reverse);
  const RecurrentProduct<scalar_t> recurrent(w_hh, /*transpose=*/false, batch);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t later = k == 0 ? -1 : order[k - 1];  // the step processed just before
    const scalar_t* gy = grad_y_p + state * t;
    const scalar_t* yp = y_p + state * t;
    scalar_t* dp = dpre_p + state * t;
    for_rows(batch, hidden, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * hidden;
        // The recurrent gradient where the later step was active for the row (an inactive
        // step passes dh through unchanged), plus this step's output gradient.
        if (later >= 0 && is_active(lengths, b, later)) {
          std::copy(recp + row, recp + row + hidden, dhp + row);
        }
        if (!is_active(lengths, b, t)) {
          std::fill(dp + row, dp + row + hidden, scalar_t(0));
          continue;
        }
        add_row<scalar_t>(dhp + row, gy + row, hidden);
        rnn_bwd_row<scalar_t>(dhp + row, yp + row, dp + row, hidden, relu);
      }
    });
    done(static_cast<int64_t>(k));
    recurrent.apply(recp, dp);
  }
  // The gradient of h0: the recurrent one where the first step was active for the row.
  if (steps == 0) return;
  for (int64_t b = 0; b < batch; ++b) {
    if (is_active(lengths, b, order.back())) {
      std::copy(recp + b * hidden, recp + (b + 1) * hidden, dhp + b * hidden);
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor> rnn_recurrence_bwd(const Tensor& grad_y, const Tensor& grad_h_n,
                                              const Tensor& w_hh, const Tensor& y,
                                              const std::optional<Tensor>& lengths_opt,
                                              bool reverse, bool relu) {
  const auto sizes = check_rnn_bwd(grad_y, grad_h_n, w_hh, y, lengths_opt, at::kCPU);
  if (y.scalar_type() == at::kBFloat16) {
    return rnn_backward_bf16(grad_y, grad_h_n, w_hh, y, lengths_ptr(sizes.lengths), reverse,
                             relu);
  }
  Tensor dpre = WorkspacePool::empty(y.sizes(), y.options());
  Tensor dh = grad_h_n.clone();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_recurrence_bwd_cpu", [&] {
    rnn_bwd_loop<scalar_t>(grad_y, w_hh, y, lengths_ptr(sizes.lengths), reverse, relu, dpre, dh,
                           [](int64_t) {});
  });
  return {dpre, dh};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bptt(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const std::optional<Tensor>& lengths_opt,
    const Tensor& y, bool reverse, bool relu, bool has_bias) {
  const auto sizes = check_rnn_bwd(grad_y, grad_h_n, w_hh, y, lengths_opt, at::kCPU);
  check_bptt_inputs(x, w_ih, y, sizes, 1, at::kCPU);
  check_argument(h0, "h0", y, {sizes.batch, sizes.hidden}, at::kCPU);
  Tensor dpre = WorkspacePool::empty(y.sizes(), y.options());
  Tensor dh = grad_h_n.clone();
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // One thread runs the loop as fast as a team while its steps are below MKL's threading.
  const bool overlap = sizes.batch * sizes.hidden * sizes.hidden < UnitSplit::kSplitUpTo;
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_bptt_cpu", [&] {
    InputWeightGrads<scalar_t> grads(
        {x, w_ih, dpre, dpre, y, h0, /*shifted=*/true, reverse, has_bias, lengths}, overlap);
    grads.run([&] {
      rnn_bwd_loop<scalar_t>(grad_y, w_hh, y, lengths, reverse, relu, dpre, dh,
                             [&](int64_t k) { grads.step_done(k); });
    });
    result = {grads.grad_x, grads.grad_w_ih, grads.grad_w_hh, grads.grad_b_ih, grads.grad_b_hh,
              dh};
  });
  return result;
}

}  // namespace fusedrnn::cpu
