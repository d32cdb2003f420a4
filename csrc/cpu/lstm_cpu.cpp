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
#include "lstm_rows.h"
#include "recurrence_cpu.h"
#include "rows.h"
#include "unit_split.h"
#include "workspace_pool.h"

namespace fusedrnn::cpu {
namespace {

using at::Tensor;

// r (n) = o (n) * tanh(cell (n)): the LSTM's output before its projection.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void lstm_output_row(const scalar_t* __restrict__ o,
                                          const scalar_t* __restrict__ cell,
                                          scalar_t* __restrict__ r, int64_t n) {
  for (int64_t j = 0; j < n; ++j) r[j] = o[j] * tanh(cell[j]);
}

// The time loop of both recurrence forward ops. bias (4H) (zeros when absent); w_hr (P,H) or
// undefined (no projection: P = H); h0 (B,P), c0 (B,H). With a projection the step's
// o * tanh(c) goes to a scratch row and y[t] = it @ w_hr^T, a second product per step; the
// hidden units are then not split across threads.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_loop(
    const Tensor& xproj, const Tensor& bias, const Tensor& w_hh, const Tensor& w_hr,
    const Tensor& h0, const Tensor& c0, const int64_t* lengths, bool reverse, bool save) {
  const int64_t steps = xproj.size(0), batch = xproj.size(1), hidden = c0.size(1);
  const bool projected = w_hr.defined();
  const int64_t out_size = h0.size(1);  // P
  // Without `save`, one step of gates and two of cells (this step's and the previous one)
  // are all the loop needs.
  Tensor gates = WorkspacePool::empty({save ? steps : 1, batch, 4 * hidden}, xproj.options());
  Tensor cells = WorkspacePool::empty({save ? steps : 2, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, out_size}, xproj.options());
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h of even and odd processed steps
  Tensor c_last = at::empty_like(c0);
  // o * tanh(c) before the projection, and a row the cell's copy of it goes to unused.
  Tensor r = projected ? at::empty({2, batch, hidden}, xproj.options()) : Tensor();
  const UnitSplit split(batch, 4, hidden, /*allowed=*/!projected,
                        UnitSplit::lstm_up_to(xproj.scalar_type()));
  Tensor hidden_gates = at::empty({split.parts, batch, 4 * split.chunk}, xproj.options());
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "lstm_recurrence_fwd_cpu", [&] {
    const int64_t cell_step = batch * hidden, out_step = batch * out_size;
    const scalar_t* xproj_p = xproj.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    scalar_t* cells_p = cells.data_ptr<scalar_t>();
    scalar_t* y_p = y.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    scalar_t* rp = projected ? r.data_ptr<scalar_t>() : nullptr;
    const auto products =
        gate_row_products<RecurrentProduct<scalar_t>>(split, w_hh, 4, batch, steps);
    // With a projection the step is not split: w_hr's one part, kept as W_hh's are (split,
    // gate_rows would cut w_hr's P rows by hidden units).
    TORCH_INTERNAL_ASSERT(!projected || split.parts == 1);
    const auto projection = projected
        ? gate_row_products<RecurrentProduct<scalar_t>>(split, w_hr, 1, batch, steps)
        : std::vector<RecurrentProduct<scalar_t>>();
    const auto order = time_order(steps, reverse);
    avx512_rows();  // a bad FUSEDRNN_CPU_MATH raises here, before the loop
    // Part p of the hidden units: its rows of every gate's product, then the cell for them;
    // the threads meet once per step, when h is complete.
    split.run([&](int64_t first, int64_t stride) {
      scalar_t* h_cur = h_a.data_ptr<scalar_t>();
      scalar_t* h_next = h_b.data_ptr<scalar_t>();
      const scalar_t* c_prev = c0.data_ptr<scalar_t>();
      split.steps(order, [&](int64_t k, int64_t t) {
        const scalar_t* xp = xproj_p + 4 * cell_step * t;
        scalar_t* gp = save ? gates_p + 4 * cell_step * t : gates_p;
        scalar_t* cp = cells_p + cell_step * (save ? t : k % 2);
        scalar_t* yp = y_p + out_step * t;
        for (int64_t p = first; p < split.parts; p += stride) {
          const int64_t u0 = split.begin(p), n = split.end(p) - u0;
          scalar_t* hg = hidden_gates.data_ptr<scalar_t>() + p * batch * 4 * split.chunk;
          products[p].apply(hg, h_cur);
          split.for_rows(batch, 4 * n, [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
              const int64_t row = b * hidden + u0;
              scalar_t* out = projected ? rp + row : yp + row;
              scalar_t* h_out = projected ? rp + cell_step + row : h_next + row;
              lstm_forward_row<scalar_t>(xp + 4 * b * hidden + u0, hg + b * 4 * n, bp + u0,
                                         gp + 4 * b * hidden + u0, hidden, n, c_prev + row,
                                         cp + row, out, h_out, n);
              if (!is_active(lengths, b, t)) {
                if (!projected) hold_row<scalar_t>(h_next + row, h_cur + row, yp + row, n);
                hold_row<scalar_t>(cp + row, c_prev + row, nullptr, n);
              }
            }
          });
        }
        if (projected) {  // y[t] = r @ w_hr^T, then h as y on the active rows
          projection[0].apply(yp, rp);
          for (int64_t b = 0; b < batch; ++b) {
            scalar_t* h_row = h_next + b * out_size;
            if (is_active(lengths, b, t)) {
              std::copy(yp + b * out_size, yp + (b + 1) * out_size, h_row);
            } else {
              hold_row<scalar_t>(h_row, h_cur + b * out_size, yp + b * out_size, out_size);
            }
          }
        }
        c_prev = cp;
        std::swap(h_cur, h_next);
      });
    });
    const scalar_t* c_final =
        steps == 0 ? c0.data_ptr<scalar_t>()
                   : cells_p + cell_step * (save ? order.back() : (steps - 1) % 2);
    std::copy(c_final, c_final + cell_step, c_last.data_ptr<scalar_t>());
  });
  Tensor h_last = steps % 2 == 0 ? h_a : h_b;
  if (!save) return {y, h_last, c_last, xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_last, c_last, gates, cells};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_recurrence_fwd(
    const Tensor& xproj, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths, bool reverse,
    bool save) {
  const auto sizes = check_lstm_fwd(xproj, bias, w_hh, h0, c0, lengths, at::kCPU);
  if (xproj.scalar_type() == at::kBFloat16) {
    return lstm_forward_bf16(xproj, bias_or_zeros(bias, 4 * sizes.hidden, xproj), w_hh, h0, c0,
                             lengths_ptr(sizes.lengths), reverse, save);
  }
  return lstm_forward_loop(xproj, bias_or_zeros(bias, 4 * sizes.hidden, xproj), w_hh, Tensor(),
                           h0, c0, lengths_ptr(sizes.lengths), reverse, save);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_recurrence_fwd(
    const Tensor& xproj, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths, bool reverse, bool save) {
  const auto sizes = check_lstm_proj_fwd(xproj, bias, w_hh, w_hr, h0, c0, lengths, at::kCPU);
  return lstm_forward_loop(xproj, bias_or_zeros(bias, 4 * sizes.hidden, xproj), w_hh, w_hr, h0,
                           c0, lengths_ptr(sizes.lengths), reverse, save);
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
  // Read in place: a copy of each part's columns would be a pass over W_hh per call, more
  // than the products of a short sequence read.
  const std::vector<Tensor> parts = split.column_blocks(w_hh);
  // Per part, the dgates of the step just processed @ its columns of w_hh: (B, n).
  Tensor rec = at::empty({split.parts, batch, split.chunk}, dh.options());
  const int64_t state = batch * hidden;  // elements of one step of grad_y and cells
  scalar_t* dhp = dh.data_ptr<scalar_t>();
  scalar_t* dcp = dc.data_ptr<scalar_t>();
  const scalar_t* grad_y_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  const scalar_t* cells_p = cells.data_ptr<scalar_t>();
  scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
  const auto products =
      part_products<RecurrentProduct<scalar_t>>(parts, /*transpose=*/false, batch);
  const auto order = time_order(steps, !reverse);
  // Part p of the hidden units: the gradient reaching its units of h (its columns of the
  // product with the previous step's dgates, all of which are complete after a barrier),
  // then the cell's backward for them.
  split.run([&](int64_t first, int64_t stride) {
    const auto done_by_first = [&](int64_t k) {
      if (first == 0) done(k);
    };
    const bool finished = split.steps(order, [&](int64_t k, int64_t t) {
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
    }, done_by_first);
    if (!finished) return;
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

// The backward time loop with a projection w_hr (P,H), on one thread. As lstm_bwd_loop,
// with dh (B,P); also writes dh_steps (T,B,P), the gradient reaching h at each step (0 where
// inactive), and r_steps (T,B,H) = o * tanh(c): the factors of the w_hr gradient.
template <typename scalar_t, typename Done>
void lstm_proj_bwd_loop(const Tensor& grad_y, const Tensor& w_hh, const Tensor& w_hr,
                        const Tensor& c0, const int64_t* lengths, const Tensor& gates,
                        const Tensor& cells, bool reverse, Tensor& dgates, Tensor& dh,
                        Tensor& dc, Tensor& dh_steps, Tensor& r_steps, const Done& done) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = cells.size(2);
  const int64_t out_size = w_hr.size(0), cell_step = batch * hidden, out_step = batch * out_size;
  Tensor rec = at::empty({batch, out_size}, dh.options());  // later dgates @ w_hh
  Tensor dr = at::empty({batch, hidden}, dh.options());     // dh @ w_hr
  scalar_t *dhp = dh.data_ptr<scalar_t>(), *dcp = dc.data_ptr<scalar_t>();
  scalar_t *recp = rec.data_ptr<scalar_t>(), *drp = dr.data_ptr<scalar_t>();
  const scalar_t* grad_y_p = grad_y.data_ptr<scalar_t>();
  const scalar_t* gates_p = gates.data_ptr<scalar_t>();
  const scalar_t* cells_p = cells.data_ptr<scalar_t>();
  scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
  const RecurrentProduct<scalar_t> recurrent(w_hh, /*transpose=*/false, batch);
  const RecurrentProduct<scalar_t> back_projection(w_hr, /*transpose=*/false, batch);
  const auto order = time_order(steps, !reverse);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t before = reverse ? t + 1 : t - 1;  // the step the forward ran before t
    const scalar_t* c_prev = (before >= 0 && before < steps) ? cells_p + cell_step * before
                                                             : c0.data_ptr<scalar_t>();
    const int64_t later = k == 0 ? -1 : order[k - 1];  // the step processed just before
    if (later >= 0) recurrent.apply(recp, dgates_p + 4 * cell_step * later);
    scalar_t* dh_t = dh_steps.data_ptr<scalar_t>() + out_step * t;
    for (int64_t b = 0; b < batch; ++b) {  // the gradient reaching h, as in lstm_bwd_loop
      scalar_t* dh_row = dhp + b * out_size;
      if (later >= 0 && is_active(lengths, b, later)) {
        std::copy(recp + b * out_size, recp + (b + 1) * out_size, dh_row);
      }
      if (is_active(lengths, b, t)) {
        add_row<scalar_t>(dh_row, grad_y_p + out_step * t + b * out_size, out_size);
        std::copy(dh_row, dh_row + out_size, dh_t + b * out_size);
      } else {
        std::fill(dh_t + b * out_size, dh_t + (b + 1) * out_size, scalar_t(0));
      }
    }
    back_projection.apply(drp, dh_t);
    for_rows(batch, 4 * hidden, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * hidden, grow = 4 * b * hidden;
        scalar_t* dgp = dgates_p + 4 * cell_step * t + grow;
        scalar_t* rp = r_steps.data_ptr<scalar_t>() + cell_step * t + row;
        if (!is_active(lengths, b, t)) {
          std::fill(dgp, dgp + 4 * hidden, scalar_t(0));
          std::fill(rp, rp + hidden, scalar_t(0));
          continue;
        }
        const scalar_t* gp = gates_p + 4 * cell_step * t + grow;
        const scalar_t* cp = cells_p + cell_step * t + row;
        lstm_bwd_row<scalar_t>(drp + row, dcp + row, gp, cp, c_prev + row, dgp, hidden, hidden);
        lstm_output_row<scalar_t>(gp + 3 * hidden, cp, rp, hidden);
      }
    });
    done(static_cast<int64_t>(k));
  }
  // The gradient of h0: the recurrent one where the first step was active for the row.
  if (steps == 0) return;
  recurrent.apply(recp, dgates_p + 4 * cell_step * order.back());
  for (int64_t b = 0; b < batch; ++b) {
    if (is_active(lengths, b, order.back())) {
      std::copy(recp + b * out_size, recp + (b + 1) * out_size, dhp + b * out_size);
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& c0, const std::optional<Tensor>& lengths_opt, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  const auto sizes = check_lstm_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt, gates,
                                    cells, at::kCPU);
  if (gates.scalar_type() == at::kBFloat16) {
    return lstm_backward_bf16(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_ptr(sizes.lengths),
                              gates, cells, reverse);
  }
  Tensor dgates = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dc = grad_c_n.clone();
  Tensor dh = grad_h_n.clone();
  const UnitSplit split(sizes.batch, 4, sizes.hidden, /*allowed=*/true,
                        UnitSplit::lstm_up_to(gates.scalar_type()));
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_recurrence_bwd_cpu", [&] {
    lstm_bwd_loop<scalar_t>(grad_y, w_hh, c0, lengths_ptr(sizes.lengths), gates, cells, reverse,
                            split, dgates, dh, dc, [](int64_t) {});
  });
  return {dgates, dh, dc};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bptt(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& w_hr_opt,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths_opt,
    const Tensor& y, const Tensor& gates, const Tensor& cells, bool reverse, bool has_bias) {
  const bool projected = w_hr_opt.has_value() && w_hr_opt->defined();
  const Tensor w_hr = projected ? *w_hr_opt : Tensor();
  const auto sizes = projected ? check_lstm_proj_bwd(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, c0,
                                                     lengths_opt, gates, cells, at::kCPU)
                               : check_lstm_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0,
                                                lengths_opt, gates, cells, at::kCPU);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const int64_t out_size = projected ? w_hr.size(0) : hidden;
  check_bptt_inputs(x, w_ih, gates, sizes, 4, at::kCPU);
  check_argument(h0, "h0", gates, {batch, out_size}, at::kCPU);
  check_argument(y, "y", gates, {steps, batch, out_size}, at::kCPU);
  Tensor dgates = WorkspacePool::empty(gates.sizes(), gates.options());
  Tensor dc = grad_c_n.clone();
  Tensor dh = grad_h_n.clone();
  Tensor dh_steps, r_steps;  // the factors of the w_hr gradient
  if (projected) {
    dh_steps = WorkspacePool::empty({steps, batch, out_size}, gates.options());
    r_steps = WorkspacePool::empty({steps, batch, hidden}, gates.options());
  }
  const int64_t* lengths = lengths_ptr(sizes.lengths);
  // One thread runs the loop as fast as a team while its steps are below MKL's threading;
  // on brgemm, leaving the products to the other threads pays up to larger steps.
  const bool overlap = batch * 4 * hidden * out_size <
      (uses_brgemm(gates.scalar_type()) ? kLstmOverlapOnBrgemmBelow : UnitSplit::kSplitUpTo);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_bptt_cpu", [&] {
    InputWeightGrads<scalar_t> grads({x, w_ih, dgates, dgates, y, h0, /*shifted=*/true, reverse,
                                      has_bias, lengths, dh_steps, r_steps},
                                     overlap);
    auto done = [&](int64_t k) { grads.step_done(k); };
    const UnitSplit split(batch, 4, hidden, /*allowed=*/!grads.overlapped(),
                          UnitSplit::lstm_up_to(gates.scalar_type()));
    grads.run([&] {
      if (projected) {
        lstm_proj_bwd_loop<scalar_t>(grad_y, w_hh, w_hr, c0, lengths, gates, cells, reverse,
                                     dgates, dh, dc, dh_steps, r_steps, done);
      } else {
        lstm_bwd_loop<scalar_t>(grad_y, w_hh, c0, lengths, gates, cells, reverse, split, dgates,
                                dh, dc, done);
      }
    });
    result = {grads.grad_x, grads.grad_w_ih, grads.grad_w_hh, grads.grad_b_ih, grads.grad_b_hh,
              grads.grad_w_hr, dh, dc};
  });
  return result;
}

}  // namespace fusedrnn::cpu
