// LSTM time loops of the cpu backend (gates i, f, g, o). Per step: one BLAS product into
// the step's gate buffer, then one pass over each row that applies the cell and writes
// everything the step produces; the loops over hidden units vectorise (cpu_math.h).
// Saved tensors have the reference backend's layout: gates activated, cells = c.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "blas.h"
#include "cpu_math.h"
#include "input_weight_grads.h"
#include "recurrence_cpu.h"
#include "rows.h"
#include "unit_split.h"
#include "workspace_pool.h"

namespace fusedrnn::cpu {
namespace {

using at::Tensor;

// One row of the forward step, for n hidden units: gate k (i, f, g, o) of the units is at
// xg + k * xs (x W_ih^T, read), hg + k * hs (h W_hh^T, read), bias + k * xs (b_ih + b_hh,
// read) and g + k * xs (written: activated). c_prev (n) read; cell, y, h_next (n) written:
// c, h, h.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void lstm_fwd_row(const scalar_t* __restrict__ xg,
                                       const scalar_t* __restrict__ hg,
                                       const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ g, int64_t xs, int64_t hs,
                                       const scalar_t* __restrict__ c_prev,
                                       scalar_t* __restrict__ cell, scalar_t* __restrict__ y,
                                       scalar_t* __restrict__ h_next, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t i = sigmoid(xg[j] + hg[j] + bias[j]);
    const scalar_t f = sigmoid(xg[xs + j] + hg[hs + j] + bias[xs + j]);
    const scalar_t gg = tanh(xg[2 * xs + j] + hg[2 * hs + j] + bias[2 * xs + j]);
    const scalar_t o = sigmoid(xg[3 * xs + j] + hg[3 * hs + j] + bias[3 * xs + j]);
    const scalar_t c = flush(f * c_prev[j] + i * gg);
    g[j] = i;
    g[xs + j] = f;
    g[2 * xs + j] = gg;
    g[3 * xs + j] = o;
    cell[j] = c;
    y[j] = h_next[j] = flush(o * tanh(c));
  }
}

// One row of the backward step, for n hidden units. dh (n) read: the gradient reaching h;
// dc (n) in/out: the gradient of the cell state, carried to the previous step; gate k (i, f,
// g, o) of the units at gates + k * gs (read, as saved) and dgates + k * gs (written:
// pre-activation gradients); cell, c_prev (n) read.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void lstm_bwd_row(const scalar_t* __restrict__ dh,
                                       scalar_t* __restrict__ dc,
                                       const scalar_t* __restrict__ gates,
                                       const scalar_t* __restrict__ cell,
                                       const scalar_t* __restrict__ c_prev,
                                       scalar_t* __restrict__ dgates, int64_t gs, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t i = gates[j], f = gates[gs + j], gg = gates[2 * gs + j],
                   o = gates[3 * gs + j];
    const scalar_t tc = tanh(cell[j]);
    const scalar_t dcv = dc[j] + dh[j] * o * (1 - tc * tc);
    dgates[j] = flush(dcv * gg * i * (1 - i));
    dgates[gs + j] = flush(dcv * c_prev[j] * f * (1 - f));
    dgates[2 * gs + j] = flush(dcv * i * (1 - gg * gg));
    dgates[3 * gs + j] = flush(dh[j] * tc * o * (1 - o));
    dc[j] = flush(dcv * f);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_recurrence_fwd(
    const Tensor& xproj, const std::optional<Tensor>& bias_opt, const Tensor& w_hh,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths_opt, bool reverse,
    bool save) {
  const auto sizes = check_lstm_fwd(xproj, bias_opt, w_hh, h0, c0, lengths_opt, at::kCPU);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Tensor bias = bias_or_zeros(bias_opt, 4 * hidden, xproj);
  // Without `save`, one step of gates and two of cells (this step's and the previous one)
  // are all the loop needs.
  Tensor gates = WorkspacePool::empty({save ? steps : 1, batch, 4 * hidden}, xproj.options());
  Tensor cells = WorkspacePool::empty({save ? steps : 2, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h of even and odd processed steps
  Tensor c_last = at::empty_like(c0);
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  const UnitSplit split(batch, 4, hidden);
  const std::vector<Tensor> parts = split.gate_rows(w_hh, 4);
  Tensor hidden_gates = at::empty({split.parts, batch, 4 * split.chunk}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "lstm_recurrence_fwd_cpu", [&] {
    const int64_t state = batch * hidden;  // elements of one step of y and cells
    const scalar_t* xproj_p = xproj.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* cells_p = cells.data_ptr<scalar_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    std::vector<RecurrentProduct<scalar_t>> products;
    for (const Tensor& part : parts) products.emplace_back(part, /*transpose=*/true, batch);
    const auto order = time_order(steps, reverse);
    // Part p of the hidden units: its rows of every gate's product, then the cell for them;
    // the threads meet once per step, when h is complete.
    split.run([&](int64_t first, int64_t stride) {
      scalar_t* h_cur = h_a.data_ptr<scalar_t>();
      scalar_t* h_next = h_b.data_ptr<scalar_t>();
      const scalar_t* c_prev = c0.data_ptr<scalar_t>();
      for (size_t k = 0; k < order.size(); ++k) {
        const int64_t t = order[k];
        const scalar_t* xp = xproj_p + 4 * state * t;
        scalar_t* gp = save ? gates_p + 4 * state * t : gates_p;
        scalar_t* cp = cells_p + state * (save ? t : static_cast<int64_t>(k % 2));
        scalar_t* yp = y_p + state * t;
        for (int64_t p = first; p < split.parts; p += stride) {
          const int64_t u0 = split.begin(p), n = split.end(p) - u0;
          scalar_t* hg = hidden_gates.data_ptr<scalar_t>() + p * batch * 4 * split.chunk;
          products[p].apply(hg, h_cur);
          split.for_rows(batch, 4 * n, [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
              const int64_t row = b * hidden + u0;
              lstm_fwd_row<scalar_t>(xp + 4 * b * hidden + u0, hg + b * 4 * n, bp + u0,
                                     gp + 4 * b * hidden + u0, hidden, n, c_prev + row,
                                     cp + row, yp + row, h_next + row, n);
              if (!is_active(lengths, b, t)) {
                hold_row<scalar_t>(h_next + row, h_cur + row, yp + row, n);
                hold_row<scalar_t>(cp + row, c_prev + row, nullptr, n);
              }
            }
          });
        }
        c_prev = cp;
        std::swap(h_cur, h_next);
        split.barrier();
      }
    });
    const scalar_t* c_final = steps == 0 ? c0.data_ptr<scalar_t>()
                                         : cells_p + state * (save ? order.back() : (steps - 1) % 2);
    std::copy(c_final, c_final + state, c_last.data_ptr<scalar_t>());
  });
  Tensor h_last = steps % 2 == 0 ? h_a : h_b;
  if (!save) return {y, h_last, c_last, xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_last, c_last, gates, cells};
}

namespace {

// The backward time loop. dgates (T,B,4H) written; dh, dc (B,H) in: the gradients of h_n
// and c_n, out: of h0 and c0. done(k) runs once the dgates of the k-th processed step are
// all written.
template <typename scalar_t, typename Done>
void lstm_bwd_loop(const Tensor& grad_y, const Tensor& w_hh, const Tensor& c0,
                   const int64_t* lengths, const Tensor& gates, const Tensor& cells,
                   bool reverse, const UnitSplit& split, Tensor& dgates, Tensor& dh, Tensor& dc,
                   const Done& done) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  const std::vector<Tensor> parts = split.columns(w_hh);
  // Per part, the dgates of the step just processed @ its columns of w_hh: (B, n).
  Tensor rec = at::empty({split.parts, batch, split.chunk}, dh.options());
  const int64_t state = batch * hidden;  // elements of one step of grad_y and cells
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.data_ptr<scalar_t>();
  const scalar_t* grad_y_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  const scalar_t* cells_p = cells.data_ptr<scalar_t>();
  scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
  std::vector<RecurrentProduct<scalar_t>> products;
  for (const Tensor& part : parts) products.emplace_back(part, /*transpose=*/false, batch);
  const auto order = time_order(steps, !reverse);
  // Part p of the hidden units: the gradient reaching its units of h (its columns of the
  // product with the previous step's dgates, all of which are complete after a barrier),
  // then the cell's backward for them.
  split.run([&](int64_t first, int64_t stride) {
    for (size_t k = 0; k < order.size(); ++k) {
      const int64_t t = order[k];
      const int64_t before = reverse ? t + 1 : t - 1;  // the step the forward ran before t
      const scalar_t* c_prev = (before >= 0 && before < steps) ? cells_p + state * before
                                                               : c0.data_ptr<scalar_t>();
      const scalar_t* gy = grad_y_p + state * t;
      const scalar_t* gp = gates_p + 4 * state * t;
      const scalar_t* cp = cells_p + state * t;
      scalar_t* dgp = dgates_p + 4 * state * t;
      const int64_t later = k == 0 ? -1 : order[k - 1];  // the step processed just before
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        scalar_t* recp = rec.data_ptr<scalar_t>() + p * batch * split.chunk;
        if (later >= 0) products[p].apply(recp, dgates_p + 4 * state * later);
        split.for_rows(batch, 4 * n, [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0, grow = 4 * b * hidden + u0;
            // The gradient reaching h here: the recurrent one from the later step if that
            // step was active for this row (an inactive step passes dh through) ...
            if (later >= 0 && is_active(lengths, b, later)) {
              std::copy(recp + b * n, recp + (b + 1) * n, dhp + row);
            }
            if (!is_active(lengths, b, t)) {
              for (int64_t g = 0; g < 4; ++g) {
                std::fill(dgp + grow + g * hidden, dgp + grow + g * hidden + n, scalar_t(0));
              }
              continue;
            }
            // ... plus the gradient of this step's output.
            add_row<scalar_t>(dhp + row, gy + row, n);
            lstm_bwd_row<scalar_t>(dhp + row, dcp + row, gp + grow, cp + row, c_prev + row,
                                   dgp + grow, hidden, n);
          }
        });
      }
      split.barrier();
      if (first == 0) done(static_cast<int64_t>(k));
    }
    // The gradient of h0: the recurrent one where the first step was active for the row.
    if (steps == 0) return;
    const int64_t first_step = order.back();
    for (int64_t p = first; p < split.parts; p += stride) {
      const int64_t u0 = split.begin(p), n = split.end(p) - u0;
      scalar_t* recp = rec.data_ptr<scalar_t>() + p * batch * split.chunk;
      products[p].apply(recp, dgates_p + 4 * state * first_step);
      for (int64_t b = 0; b < batch; ++b) {
        if (is_active(lengths, b, first_step)) {
          std::copy(recp + b * n, recp + (b + 1) * n, dhp + b * hidden + u0);
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& c0, const std::optional<Tensor>& lengths_opt, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  const auto sizes = check_lstm_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt, gates,
                                    cells, at::kCPU);
  Tensor dgates = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dc = grad_c_n.clone();
  Tensor dh = grad_h_n.clone();
  const UnitSplit split(sizes.batch, 4, sizes.hidden);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_recurrence_bwd_cpu", [&] {
    lstm_bwd_loop<scalar_t>(grad_y, w_hh, c0, lengths_ptr(sizes.lengths), gates, cells, reverse,
                            split, dgates, dh, dc, [](int64_t) {});
  });
  return {dgates, dh, dc};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bptt(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths_opt, const Tensor& y, const Tensor& gates,
    const Tensor& cells, bool reverse, bool has_bias) {
  const auto sizes = check_lstm_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt, gates,
                                    cells, at::kCPU);
  check_bptt_inputs(x, w_ih, gates, sizes, 4, at::kCPU);
  check_argument(h0, "h0", gates, {sizes.batch, sizes.hidden}, at::kCPU);
  check_argument(y, "y", gates, {sizes.steps, sizes.batch, sizes.hidden}, at::kCPU);
  Tensor dgates = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dc = grad_c_n.clone();
  Tensor dh = grad_h_n.clone();
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // One thread runs the loop as fast as a team while its steps are below MKL's threading.
  const bool overlap = sizes.batch * 4 * sizes.hidden * sizes.hidden < UnitSplit::kSplitUntil;
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_bptt_cpu", [&] {
    InputWeightGrads<scalar_t> grads(
        {x, w_ih, dgates, dgates, y, h0, /*shifted=*/true, reverse, has_bias, lengths}, overlap);
    const UnitSplit split(sizes.batch, 4, sizes.hidden, /*allowed=*/!grads.overlapped());
    grads.run([&] {
      lstm_bwd_loop<scalar_t>(grad_y, w_hh, c0, lengths, gates, cells, reverse, split, dgates,
                              dh, dc, [&](int64_t k) { grads.step_done(k); });
    });
    result = {grads.grad_x, grads.grad_w_ih, grads.grad_w_hh, grads.grad_b_ih, grads.grad_b_hh,
              dh, dc};
  });
  return result;
}

}  // namespace fusedrnn::cpu
