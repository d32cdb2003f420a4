// The LSTM time loops for bfloat16 tensors (no projection), where oneDNN's brgemm or MKL has
// a bfloat16 GEMM (bf16_product.h): forward, per step one product h @ W_hh^T with bfloat16
// operands and float32 results (on AMX or AVX512-BF16 where the CPU has them), then one
// pass per row that applies the cell in float32. c is carried in float32; h is rounded to bfloat16
// once per step, as the next product's operand. Measured on the 2-core Xeon (AMX), us per
// product, batch x hidden: 30 vs 77 for float32 at 32 x 256, 125 vs 576 at 64 x 512.
// Saved tensors have the float32 kernel's layout, in bfloat16. The backward's time loop
// (lstm_backward_bf16) mirrors it: per step one product dgates @ W_hh with bfloat16 operands
// and float32 results, the cell's backward in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "../recurrence_args.h"
#include "bf16_product.h"
#include "bf16_rows.h"
#include "cpu_math.h"
#include "lstm_rows.h"
#include "recurrence_cpu.h"
#include "rows.h"

namespace fusedrnn::cpu {
namespace {

using at::BFloat16;
using at::Tensor;

// An inactive row (n units): the states held, the output zero, the saved c the held one.
void hold_bf16_row(const float* c_prev, float* c_out, const uint16_t* h_prev, uint16_t* h_next,
                   uint16_t* y, uint16_t* cell, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    c_out[j] = c_prev[j];
    h_next[j] = h_prev[j];
    y[j] = 0;
    if (cell != nullptr) cell[j] = float_to_bf16(c_prev[j]);
  }
}

}  // namespace

// At an even hidden size: an odd one's forward product needs MKL's kernel (Bf16Product; the
// Python side asks bf16_on_mkl() before it sends one here).
bool has_bf16_gemm() { return has_bf16_product(/*k=*/2); }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_bf16(
    const Tensor& xproj, const Tensor& bias, const Tensor& w_hh, const Tensor& h0,
    const Tensor& c0, const int64_t* lengths, bool reverse, bool save) {
  check_bf16_product(w_hh.size(1), "the bfloat16 LSTM");
  const int64_t steps = xproj.size(0), batch = xproj.size(1), hidden = c0.size(1);
  const auto bf16 = xproj.options();
  Tensor y = at::empty({steps, batch, hidden}, bf16);
  Tensor gates = save ? at::empty({steps, batch, 4 * hidden}, bf16) : at::empty({0}, bf16);
  Tensor cells = save ? at::empty({steps, batch, hidden}, bf16) : at::empty({0}, bf16);
  Tensor products = at::empty({batch, 4 * hidden}, bf16.dtype(at::kFloat));
  // Per row, float32: the widened x projection (4H), the gates (4H), h twice (the cell
  // writes the output and the next state apart).
  Tensor scratch = at::empty({batch, 10 * hidden}, bf16.dtype(at::kFloat));
  Tensor bias_f = bias.to(at::kFloat).contiguous();
  Tensor c_a = c0.to(at::kFloat).contiguous().clone(), c_b = at::empty_like(c_a);
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h, c of the step before and this one
  const Bf16Product product(w_hh, /*transpose=*/true, batch);
  float* hg = products.data_ptr<float>();
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* scratch_p = scratch.data_ptr<float>();
  const float* bias_p = bias_f.data_ptr<float>();
  // Rows split over the threads in pieces of at least 4096 units (about 20 us of the cell).
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(hidden, 1));
  for (int64_t t : time_order(batch == 0 ? 0 : steps, reverse)) {
    const uint16_t* h_cur = bits<const uint16_t>(h_a);
    uint16_t* h_nxt = bits<uint16_t>(h_b);
    const float* c_before = c_a.data_ptr<float>();
    float* c_after = c_b.data_ptr<float>();
    product.apply(hg, h_cur);
    const uint16_t* xp = bits<const uint16_t>(xproj) + t * batch * 4 * hidden;
    uint16_t* yp = bits<uint16_t>(y) + t * batch * hidden;
    uint16_t* gp = save ? bits<uint16_t>(gates) + t * batch * 4 * hidden : nullptr;
    uint16_t* cp = save ? bits<uint16_t>(cells) + t * batch * hidden : nullptr;
    at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * hidden;
        const float* c_prev = c_before + row;
        float* c_out = c_after + row;
        uint16_t* cell = save ? cp + row : nullptr;
        float* xw = scratch_p + b * 10 * hidden;
        float* g = xw + 4 * hidden;
        float* h = g + 4 * hidden;
        widen_row(xp + 4 * row, xw, 4 * hidden);
        lstm_forward_row<float>(xw, hg + 4 * row, bias_p, g, hidden, hidden, c_prev, c_out, h,
                                h + hidden, hidden);
        narrow_row(h, h_nxt + row, hidden);
        std::copy(h_nxt + row, h_nxt + row + hidden, yp + row);
        if (save) {
          narrow_row(g, gp + 4 * row, 4 * hidden);
          narrow_row(c_out, cell, hidden);
        }
        if (!is_active(lengths, b, t)) {
          hold_bf16_row(c_prev, c_out, h_cur + row, h_nxt + row, yp + row, cell, hidden);
        }
      }
    });
    std::swap(h_a, h_b);
    std::swap(c_a, c_b);
  }
  return {y, h_a, c_a.to(at::kBFloat16), gates, cells};  // gates, cells: (0,) without save
}

std::tuple<Tensor, Tensor, Tensor> lstm_backward_bf16(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& c0, const int64_t* lengths, const Tensor& gates, const Tensor& cells,
    bool reverse) {
  check_bf16_product(w_hh.size(0), "the bfloat16 LSTM backward");
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  const auto f32 = grad_y.options().dtype(at::kFloat);
  Tensor dgates = at::empty(gates.sizes(), gates.options());
  Tensor dh = grad_h_n.to(at::kFloat).contiguous().clone();
  Tensor dc = grad_c_n.to(at::kFloat).contiguous().clone();
  Tensor rec = at::empty({batch, hidden}, f32);  // the processed step's dgates @ W_hh
  // Per row, float32: gates (4H), c, c_prev (H each) widened, and the row's dgates (4H).
  Tensor scratch = at::empty({batch, 10 * hidden}, f32);
  const Bf16Product product(w_hh, /*transpose=*/false, batch);
  const int64_t state = batch * hidden;
  const auto order = time_order(batch == 0 ? 0 : steps, !reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* rec_p = rec.data_ptr<float>();
  float* dh_p = dh.data_ptr<float>();
  float* dc_p = dc.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  uint16_t* dgates_p = bits<uint16_t>(dgates);
  const uint16_t* gates_p = bits<const uint16_t>(gates);
  const uint16_t* cells_p = bits<const uint16_t>(cells);
  const uint16_t* grad_y_p = bits<const uint16_t>(grad_y);
  // The gradient reaching h from the step processed before (the later one in the forward's
  // order): rec = its dgates (B, 4H) @ W_hh (4H, H), for the rows where it was active.
  const auto take_recurrent = [&](int64_t later) {
    product.apply(rec_p, dgates_p + 4 * state * later);
    for (int64_t b = 0; b < batch; ++b) {
      if (is_active(lengths, b, later)) {
        std::copy(rec_p + b * hidden, rec_p + (b + 1) * hidden, dh_p + b * hidden);
      }
    }
  };
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(hidden, 1));
  for (size_t step = 0; step < order.size(); ++step) {
    const int64_t t = order[step];
    if (step > 0) take_recurrent(order[step - 1]);
    const int64_t before = reverse ? t + 1 : t - 1;  // the step the forward ran before t
    const uint16_t* c_prev = (before >= 0 && before < steps) ? cells_p + state * before
                                                             : bits<const uint16_t>(c0);
    at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * hidden;
        uint16_t* dgp = dgates_p + 4 * (state * t + row);
        if (!is_active(lengths, b, t)) {  // an inactive step passes dh and dc through
          std::fill(dgp, dgp + 4 * hidden, uint16_t{0});
          continue;
        }
        float* g = scratch_p + b * 10 * hidden;
        float* c = g + 4 * hidden;
        float* cp = c + hidden;
        float* dg = cp + hidden;
        float* dhp = dh_p + row;
        widen_row(gates_p + 4 * (state * t + row), g, 4 * hidden);
        widen_row(cells_p + state * t + row, c, hidden);
        widen_row(c_prev + row, cp, hidden);
        widen_row(grad_y_p + state * t + row, dg, hidden);
        add_row<float>(dhp, dg, hidden);  // dh += grad_y[t]
        lstm_bwd_row<float>(dhp, dc_p + row, g, c, cp, dg, hidden, hidden);
        narrow_row(dg, dgp, 4 * hidden);
      }
    });
  }
  if (!order.empty()) take_recurrent(order.back());  // the gradient of h0
  return {dgates, dh.to(at::kBFloat16), dc.to(at::kBFloat16)};
}

}  // namespace fusedrnn::cpu
