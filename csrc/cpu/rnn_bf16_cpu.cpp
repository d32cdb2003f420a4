// The Elman RNN time loops for bfloat16 tensors, where oneDNN's brgemm or MKL has a bfloat16
// GEMM (bf16_product.h), as the LSTM's (lstm_bf16_cpu.cpp): forward, per step one product
// h @ W_hh^T with bfloat16 operands and float32 results, then one pass per row that applies
// the activation in float32 (rnn_fwd_row) and rounds h, which is the output and the next
// product's operand. The backward (rnn_backward_bf16) mirrors it: per step act'(pre) in
// float32, then one product dpre @ W_hh with bfloat16 operands; dh is carried in float32.
// Both loops split a step by hidden units (unit_split.h;
// benchmarks/results/epyc-2core-gru-rnn-unit-split-ab).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "bf16_product.h"
#include "bf16_rows.h"
#include "recurrence_cpu.h"
#include "rnn_rows.h"
#include "rows.h"
#include "unit_split.h"

namespace fusedrnn::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor> rnn_forward_bf16(const Tensor& xproj, const Tensor& bias,
                                            const Tensor& w_hh, const Tensor& h0,
                                            const int64_t* lengths, bool reverse, bool relu) {
  check_bf16_product(w_hh.size(1), "the bfloat16 RNN");
  avx512_rows();  // a bad FUSEDRNN_CPU_MATH raises here, before the loop
  const int64_t steps = xproj.size(0), batch = xproj.size(1), hidden = h0.size(1);
  const int64_t state = batch * hidden;
  const auto f32 = xproj.options().dtype(at::kFloat);
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  // The state, rounded (the product's operand), of even and odd processed steps.
  Tensor h_a = h0.clone(), h_b = at::empty_like(h0);
  // Split by hidden units as the LSTM's loops are (unit_split.h): part p's product gives
  // its units' h W_hh^T, (B, n).
  const UnitSplit split(batch, 1, hidden);
  const auto products = gate_row_products<Bf16Product>(split, w_hh, 1, batch, steps);
  Tensor hidden_gates = at::empty({split.parts, batch, split.chunk}, f32);
  // Per thread, float32: a row's widened x projection, h twice (rnn_fwd_row writes y and h
  // apart).
  Tensor scratch = split.thread_scratch(3, f32);
  Tensor bias_f = bias.to(at::kFloat).contiguous();
  const auto order = time_order(batch == 0 ? 0 : steps, reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* hg_p = hidden_gates.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  const float* bias_p = bias_f.data_ptr<float>();
  const uint16_t* xproj_p = bits<const uint16_t>(xproj);
  uint16_t* y_p = bits<uint16_t>(y);
  split.run([&](int64_t first, int64_t stride) {
    uint16_t* h_cur = bits<uint16_t>(h_a);
    uint16_t* h_next = bits<uint16_t>(h_b);
    split.steps(order, [&](int64_t /*k*/, int64_t t) {
      const uint16_t* xp = xproj_p + state * t;
      uint16_t* yp = y_p + state * t;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        float* hg = hg_p + p * batch * split.chunk;
        products[p].apply(hg, h_cur);
        split.for_rows(batch, 2 * n, [&](int64_t begin, int64_t end) {
          const int64_t thread = split.thread(first);
          float* xw = scratch_p + thread * 3 * split.chunk;
          float* out = xw + n;
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0;
            if (!is_active(lengths, b, t)) {  // the state held
              std::copy(h_cur + row, h_cur + row + n, h_next + row);
              std::fill(yp + row, yp + row + n, uint16_t{0});
              continue;
            }
            widen_row(xp + row, xw, n);
            rnn_forward_row<float>(xw, hg + b * n, bias_p + u0, out, out + n, n, relu);
            narrow_row(out, yp + row, n);
            std::copy(yp + row, yp + row + n, h_next + row);
          }
        });
      }
      std::swap(h_cur, h_next);
    });
  });
  return {y, order.size() % 2 == 0 ? h_a : h_b};
}

std::tuple<Tensor, Tensor> rnn_backward_bf16(const Tensor& grad_y, const Tensor& grad_h_n,
                                             const Tensor& w_hh, const Tensor& y,
                                             const int64_t* lengths, bool reverse, bool relu) {
  check_bf16_product(w_hh.size(0), "the bfloat16 RNN backward");
  const int64_t steps = y.size(0), batch = y.size(1), hidden = y.size(2);
  const int64_t state = batch * hidden;
  const auto f32 = y.options().dtype(at::kFloat);
  Tensor dpre = at::empty(y.sizes(), y.options());
  Tensor dh = grad_h_n.to(at::kFloat).contiguous().clone();
  // Split by hidden units as the forward is: part p's product gives the gradient reaching
  // its units of h, dpre (B, H) @ its columns of W_hh, (B, n).
  const UnitSplit split(batch, 1, hidden);
  const auto products = part_products<Bf16Product>(split.columns(w_hh), false, batch);
  Tensor rec = at::empty({split.parts, batch, split.chunk}, f32);
  // Per thread, float32: a row's grad_y, y and dpre.
  Tensor scratch = split.thread_scratch(3, f32);
  const auto order = time_order(batch == 0 ? 0 : steps, !reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* dh_p = dh.data_ptr<float>();
  float* rec_p = rec.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  uint16_t* dpre_p = bits<uint16_t>(dpre);
  const uint16_t* grad_y_p = bits<const uint16_t>(grad_y);
  const uint16_t* y_p = bits<const uint16_t>(y);
  split.run([&](int64_t first, int64_t stride) {
    // Part p's rows [begin, end) take the recurrent gradient where the step processed just
    // before (`later`) was active for them; an inactive step passes dh through unchanged.
    const auto carry_from = [&](int64_t p, int64_t later, int64_t begin, int64_t end) {
      const int64_t u0 = split.begin(p), n = split.end(p) - u0;
      const float* recp = rec_p + p * batch * split.chunk;
      for (int64_t b = begin; b < end; ++b) {
        if (is_active(lengths, b, later)) {
          std::copy(recp + b * n, recp + (b + 1) * n, dh_p + b * hidden + u0);
        }
      }
    };
    const bool finished = split.steps(order, [&](int64_t k, int64_t t) {
      const int64_t later = k == 0 ? -1 : order[k - 1];
      uint16_t* dp = dpre_p + state * t;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        if (later >= 0) products[p].apply(rec_p + p * batch * split.chunk,
                                          dpre_p + state * later);
        split.for_rows(batch, 2 * n, [&](int64_t begin, int64_t end) {
          if (later >= 0) carry_from(p, later, begin, end);
          const int64_t thread = split.thread(first);
          float* gy = scratch_p + thread * 3 * split.chunk;
          float* yf = gy + n;
          float* d = yf + n;
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0;
            if (!is_active(lengths, b, t)) {
              std::fill(dp + row, dp + row + n, uint16_t{0});
              continue;
            }
            widen_row(grad_y_p + state * t + row, gy, n);
            add_row<float>(dh_p + row, gy, n);  // dh += grad_y[t]
            widen_row(y_p + state * t + row, yf, n);
            rnn_bwd_row<float>(dh_p + row, yf, d, n, relu);
            narrow_row(d, dp + row, n);
          }
        });
      }
    });
    if (!finished) return;
    if (order.empty()) return;
    for (int64_t p = first; p < split.parts; p += stride) {  // the gradient of h0
      products[p].apply(rec_p + p * batch * split.chunk, dpre_p + state * order.back());
      split.for_rows(batch, split.end(p) - split.begin(p), [&](int64_t begin, int64_t end) {
        carry_from(p, order.back(), begin, end);
      });
    }
  });
  return {dpre, dh.to(at::kBFloat16)};
}

}  // namespace fusedrnn::cpu
