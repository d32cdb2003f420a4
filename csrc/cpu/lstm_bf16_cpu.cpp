// The LSTM time loops for bfloat16 tensors (no projection), where oneDNN's brgemm or MKL has
// a bfloat16 GEMM (bf16_product.h): forward, per step one product h @ W_hh^T with bfloat16
// operands and float32 results (on AMX or AVX512-BF16 where the CPU has them), then one
// pass per row that applies the cell in float32. c is carried in float32; h is rounded to bfloat16
// once per step, as the next product's operand. Measured on the 2-core Xeon (AMX), us per
// product, batch x hidden: 30 vs 77 for float32 at 32 x 256, 125 vs 576 at 64 x 512.
// Saved tensors have the float32 kernel's layout, in bfloat16. The backward's time loop
// (lstm_backward_bf16) mirrors it: per step one product dgates @ W_hh with bfloat16 operands
// and float32 results, the cell's backward in float32.
// Both loops split a step by hidden units as the float32 ones do (unit_split.h: each thread
// its units' product and rows, one barrier per step, from 2^18 up to 2^22 multiply-adds per
// step; above, the product on all threads, then the rows). On the 2-core AMD EPYC (brgemm),
// op alone, ms, split against the product-then-rows loop: forward 1.03 vs 1.43 at batch 8,
// hidden 128, 200 steps; 0.82 vs 1.00 at 4 x 256; backward 1.07 vs 1.29 and 0.82 vs 0.92. At
// 64 x 512 the split was 2-4.5% slower than the product on both threads, so it stops at 2^22
// on brgemm too (benchmarks/results/epyc-2core-bf16-unit-split-ab).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "bf16_product.h"
#include "bf16_rows.h"
#include "cpu_math.h"
#include "lstm_rows.h"
#include "recurrence_cpu.h"
#include "rows.h"
#include "unit_split.h"

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
  // The row with its conversions inside where the AVX-512 rows run, else the conversions
  // around the float32 row. A bad FUSEDRNN_CPU_MATH raises here, before the loop.
  const bool fused = avx512_rows();
  const int64_t steps = xproj.size(0), batch = xproj.size(1), hidden = c0.size(1);
  const auto bf16 = xproj.options();
  const auto f32 = bf16.dtype(at::kFloat);
  Tensor y = at::empty({steps, batch, hidden}, bf16);
  Tensor gates = save ? at::empty({steps, batch, 4 * hidden}, bf16) : at::empty({0}, bf16);
  Tensor cells = save ? at::empty({steps, batch, hidden}, bf16) : at::empty({0}, bf16);
  // Split by hidden units as the float32 loop is (unit_split.h): part p's product gives
  // its units' rows of every gate, (B, 4 n).
  const UnitSplit split(batch, 4, hidden);
  const auto products = gate_row_products<Bf16Product>(split, w_hh, 4, batch, steps);
  Tensor hidden_gates = at::empty({split.parts, batch, 4 * split.chunk}, f32);
  // Per thread, float32: a row's widened x projection (4n), gates (4n) and h twice (the
  // cell writes the output and the next state apart).
  Tensor scratch = split.thread_scratch(10, f32);
  // Per part, its units' bias of every gate, float32 (4 n).
  const std::vector<Tensor> bias_parts =
      split.gate_rows(bias.to(at::kFloat).contiguous().view({4 * hidden, 1}), 4);
  Tensor c_a = c0.to(at::kFloat).contiguous().clone(), c_b = at::empty_like(c_a);
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);  // h, c of even and odd processed steps
  const auto order = time_order(batch == 0 ? 0 : steps, reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* hg_p = hidden_gates.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  const uint16_t* xproj_p = bits<const uint16_t>(xproj);
  uint16_t* y_p = bits<uint16_t>(y);
  uint16_t* gates_p = save ? bits<uint16_t>(gates) : nullptr;
  uint16_t* cells_p = save ? bits<uint16_t>(cells) : nullptr;
  const int64_t state = batch * hidden;
  split.run([&](int64_t first, int64_t stride) {
    uint16_t* h_cur = bits<uint16_t>(h_a);
    uint16_t* h_nxt = bits<uint16_t>(h_b);
    float* c_before = c_a.data_ptr<float>();
    float* c_after = c_b.data_ptr<float>();
    split.steps(order, [&](int64_t /*k*/, int64_t t) {
      const uint16_t* xp = xproj_p + 4 * state * t;
      uint16_t* yp = y_p + state * t;
      uint16_t* gp = save ? gates_p + 4 * state * t : nullptr;
      uint16_t* cp = save ? cells_p + state * t : nullptr;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        float* hg = hg_p + p * batch * 4 * split.chunk;
        const float* bias_p = bias_parts[p].data_ptr<float>();
        products[p].apply(hg, h_cur);
        split.for_rows(batch, 4 * n, [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0;
            const float* c_prev = c_before + row;
            float* c_out = c_after + row;
            uint16_t* cell = save ? cp + row : nullptr;
            const uint16_t* x_row = xp + 4 * b * hidden + u0;  // gate k: + k H
            uint16_t* g_row = save ? gp + 4 * b * hidden + u0 : nullptr;
            if (fused) {
              lstm_fwd_row_bf16_avx512(x_row, hidden, hg + b * 4 * n, n, bias_p, n, g_row,
                                       hidden, c_prev, c_out, cell, yp + row, h_nxt + row, n);
            } else {
              const int64_t thread = split.thread(first);
              float* xw = scratch_p + thread * 10 * split.chunk;
              float* g = xw + 4 * n;
              float* h = g + 4 * n;
              for (int64_t gate = 0; gate < 4; ++gate) {
                widen_row(x_row + gate * hidden, xw + gate * n, n);
              }
              lstm_forward_row<float>(xw, hg + b * 4 * n, bias_p, g, n, n, c_prev, c_out, h,
                                      h + n, n);
              narrow_row(h, h_nxt + row, n);
              std::copy(h_nxt + row, h_nxt + row + n, yp + row);
              if (save) {
                for (int64_t gate = 0; gate < 4; ++gate) {
                  narrow_row(g + gate * n, g_row + gate * hidden, n);
                }
                narrow_row(c_out, cell, n);
              }
            }
            if (!is_active(lengths, b, t)) {
              hold_bf16_row(c_prev, c_out, h_cur + row, h_nxt + row, yp + row, cell, n);
            }
          }
        });
      }
      std::swap(h_cur, h_nxt);
      std::swap(c_before, c_after);
    });
  });
  const bool even = order.size() % 2 == 0;
  return {y, even ? h_a : h_b, (even ? c_a : c_b).to(at::kBFloat16), gates, cells};
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
  // Split by hidden units as the forward is: part p's product gives the gradient reaching
  // its units of h, dgates (B, 4H) @ its columns of W_hh, (B, n).
  const UnitSplit split(batch, 4, hidden);
  const auto products = part_products<Bf16Product>(split.columns(w_hh), false, batch);
  Tensor rec = at::empty({split.parts, batch, split.chunk}, f32);
  // Per thread, float32: a row's gates (4n), c and c_prev (n each) widened, and its dgates
  // (4n).
  Tensor scratch = split.thread_scratch(10, f32);
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
  const uint16_t* c0_p = bits<const uint16_t>(c0);
  split.run([&](int64_t first, int64_t stride) {
    // Part p's gradient reaching h from the step processed before (the later one in the
    // forward's order), for the rows where that step was active: rec = its dgates @ W_hh.
    const auto take_recurrent = [&](int64_t p, int64_t later, int64_t begin, int64_t end) {
      const int64_t u0 = split.begin(p), n = split.end(p) - u0;
      const float* recp = rec_p + p * batch * split.chunk;
      for (int64_t b = begin; b < end; ++b) {
        if (is_active(lengths, b, later)) {
          std::copy(recp + b * n, recp + (b + 1) * n, dh_p + b * hidden + u0);
        }
      }
    };
    const bool finished = split.steps(order, [&](int64_t k, int64_t t) {
      const int64_t later = k == 0 ? -1 : order[k - 1];  // the step processed just before
      const int64_t before = reverse ? t + 1 : t - 1;    // the step the forward ran before t
      const uint16_t* c_prev = (before >= 0 && before < steps) ? cells_p + state * before
                                                               : c0_p;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        if (later >= 0) products[p].apply(rec_p + p * batch * split.chunk,
                                          dgates_p + 4 * state * later);
        split.for_rows(batch, 4 * n, [&](int64_t begin, int64_t end) {
          if (later >= 0) take_recurrent(p, later, begin, end);
          const int64_t thread = split.thread(first);
          float* g = scratch_p + thread * 10 * split.chunk;
          float* c = g + 4 * n;
          float* cp = c + n;
          float* dg = cp + n;
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0;
            uint16_t* dgp = dgates_p + 4 * (state * t + b * hidden) + u0;  // gate k: + k H
            if (!is_active(lengths, b, t)) {  // an inactive step passes dh and dc through
              for (int64_t j = 0; j < 4; ++j) std::fill_n(dgp + j * hidden, n, uint16_t{0});
              continue;
            }
            const uint16_t* gp = gates_p + 4 * (state * t + b * hidden) + u0;
            for (int64_t j = 0; j < 4; ++j) widen_row(gp + j * hidden, g + j * n, n);
            widen_row(cells_p + state * t + row, c, n);
            widen_row(c_prev + row, cp, n);
            widen_row(grad_y_p + state * t + row, dg, n);
            add_row<float>(dh_p + row, dg, n);  // dh += grad_y[t]
            lstm_bwd_row<float>(dh_p + row, dc_p + row, g, c, cp, dg, n, n);
            for (int64_t j = 0; j < 4; ++j) narrow_row(dg + j * n, dgp + j * hidden, n);
          }
        });
      }
    });
    if (!finished) return;
    if (order.empty()) return;
    for (int64_t p = first; p < split.parts; p += stride) {  // the gradient of h0
      products[p].apply(rec_p + p * batch * split.chunk, dgates_p + 4 * state * order.back());
      split.for_rows(batch, split.end(p) - split.begin(p), [&](int64_t begin, int64_t end) {
        take_recurrent(p, order.back(), begin, end);
      });
    }
  });
  return {dgates, dh.to(at::kBFloat16), dc.to(at::kBFloat16)};
}

}  // namespace fusedrnn::cpu
