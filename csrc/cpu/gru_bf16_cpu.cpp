// The GRU time loops for bfloat16 tensors, where oneDNN's brgemm or MKL has a bfloat16 GEMM
// (bf16_product.h), as the LSTM's (lstm_bf16_cpu.cpp): forward, per step one product
// h @ W_hh^T with bfloat16 operands and float32 results, then one pass per row that widens
// the row, applies the cell in float32 (gru_fwd_row) and rounds what it stores. h is carried
// in float32 (the cell's z * h term reads it) and rounded once per step as the next
// product's operand and the output. The backward (gru_backward_bf16) mirrors it: per step
// the cell's backward in float32, then one product dgates_hid @ W_hh with bfloat16 operands.
// Saved tensors have the float32 kernel's layout, in bfloat16. Both loops split a step by
// hidden units (unit_split.h; benchmarks/results/epyc-2core-gru-rnn-unit-split-ab).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../recurrence_args.h"
#include "bf16_product.h"
#include "bf16_rows.h"
#include "gru_rows.h"
#include "recurrence_cpu.h"
#include "rows.h"
#include "unit_split.h"

namespace fusedrnn::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_bf16(
    const Tensor& xproj, const Tensor& b_ih, const Tensor& w_hh, const Tensor& b_hh,
    const Tensor& h0, const int64_t* lengths, bool reverse, bool save) {
  check_bf16_product(w_hh.size(1), "the bfloat16 GRU");
  avx512_rows();  // a bad FUSEDRNN_CPU_MATH raises here, before the loop
  const int64_t steps = xproj.size(0), batch = xproj.size(1), hidden = h0.size(1);
  const int64_t state = batch * hidden;  // elements of one step of y and hidden_n
  const auto bf16 = xproj.options();
  const auto f32 = bf16.dtype(at::kFloat);
  Tensor y = at::empty({steps, batch, hidden}, bf16);
  Tensor gates = save ? at::empty({steps, batch, 3 * hidden}, bf16) : at::empty({0}, bf16);
  Tensor hidden_n = save ? at::empty({steps, batch, hidden}, bf16) : at::empty({0}, bf16);
  // Split by hidden units as the LSTM's loops are (unit_split.h): part p's product gives
  // its units' rows of every gate, (B, 3 n).
  const UnitSplit split(batch, 3, hidden);
  const auto products = gate_row_products<Bf16Product>(split, w_hh, 3, batch, steps);
  Tensor hidden_gates = at::empty({split.parts, batch, 3 * split.chunk}, f32);
  // Per thread, float32: a row's widened x projection and gates (3n each), hidden_n and h
  // (n each).
  Tensor scratch = split.thread_scratch(8, f32);
  // Per part, its units' biases of every gate, float32 (3 n).
  const auto parts_of = [&](const Tensor& bias) {
    return split.gate_rows(bias.to(at::kFloat).contiguous().view({3 * hidden, 1}), 3);
  };
  const std::vector<Tensor> b_ih_parts = parts_of(b_ih), b_hh_parts = parts_of(b_hh);
  // h in float32 (the cell's z * h term reads it) and rounded (the product's operand), each
  // for even and odd processed steps.
  Tensor h_a = h0.to(at::kFloat).contiguous().clone(), h_b = at::empty_like(h_a);
  Tensor op_a = h0.clone(), op_b = at::empty_like(h0);
  const auto order = time_order(batch == 0 ? 0 : steps, reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* hg_p = hidden_gates.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  const uint16_t* xproj_p = bits<const uint16_t>(xproj);
  uint16_t* y_p = bits<uint16_t>(y);
  uint16_t* gates_p = save ? bits<uint16_t>(gates) : nullptr;
  uint16_t* hidden_n_p = save ? bits<uint16_t>(hidden_n) : nullptr;
  split.run([&](int64_t first, int64_t stride) {
    float* h_prev = h_a.data_ptr<float>();
    float* h_next = h_b.data_ptr<float>();
    uint16_t* op_cur = bits<uint16_t>(op_a);
    uint16_t* op_next = bits<uint16_t>(op_b);
    split.steps(order, [&](int64_t /*k*/, int64_t t) {
      const uint16_t* xp = xproj_p + 3 * state * t;
      uint16_t* yp = y_p + state * t;
      uint16_t* gp = save ? gates_p + 3 * state * t : nullptr;
      uint16_t* np = save ? hidden_n_p + state * t : nullptr;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        float* hg = hg_p + p * batch * 3 * split.chunk;
        const float* b_ih_p = b_ih_parts[p].data_ptr<float>();
        const float* b_hh_p = b_hh_parts[p].data_ptr<float>();
        products[p].apply(hg, op_cur);
        split.for_rows(batch, 3 * n, [&](int64_t begin, int64_t end) {
          const int64_t thread = split.thread(first);
          float* xw = scratch_p + thread * 8 * split.chunk;
          float* g = xw + 3 * n;
          float* hn = g + 3 * n;
          float* h = hn + n;
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0, grow = 3 * b * hidden + u0;  // gate k: + k H
            for (int64_t gate = 0; gate < 3; ++gate) {
              widen_row(xp + grow + gate * hidden, xw + gate * n, n);
            }
            gru_forward_row<float>(xw, b_ih_p, hg + 3 * b * n, g, b_hh_p, h_prev + row, hn, h,
                                   h_next + row, n, n, n);
            if (save) {
              for (int64_t gate = 0; gate < 3; ++gate) {
                narrow_row(g + gate * n, gp + grow + gate * hidden, n);
              }
              narrow_row(hn, np + row, n);
            }
            if (is_active(lengths, b, t)) {
              narrow_row(h, yp + row, n);
              std::copy(yp + row, yp + row + n, op_next + row);
            } else {  // the state held
              hold_row<float>(h_next + row, h_prev + row, nullptr, n);
              std::copy(op_cur + row, op_cur + row + n, op_next + row);
              std::fill(yp + row, yp + row + n, uint16_t{0});
            }
          }
        });
      }
      std::swap(h_prev, h_next);
      std::swap(op_cur, op_next);
    });
  });
  const Tensor h_last = order.size() % 2 == 0 ? h_a : h_b;
  return {y, h_last.to(at::kBFloat16), gates, hidden_n};  // gates, hidden_n: (0,) without save
}

std::tuple<Tensor, Tensor, Tensor> gru_backward_bf16(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h_prev,
    const int64_t* lengths, const Tensor& gates, const Tensor& hidden_n, bool reverse) {
  check_bf16_product(w_hh.size(0), "the bfloat16 GRU backward");
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = w_hh.size(1);
  const int64_t state = batch * hidden;  // elements of one step of grad_y, h_prev, hidden_n
  const auto f32 = grad_y.options().dtype(at::kFloat);
  Tensor dgates_in = at::empty(gates.sizes(), gates.options());
  Tensor dgates_hid = at::empty(gates.sizes(), gates.options());
  Tensor dh = grad_h_n.to(at::kFloat).contiguous().clone();
  // Split by hidden units as the forward is: part p's product gives the gradient reaching
  // its units of h, dgates_hid (B, 3H) @ its columns of W_hh, (B, n).
  const UnitSplit split(batch, 3, hidden);
  const auto products = part_products<Bf16Product>(split.columns(w_hh), false, batch);
  Tensor rec = at::empty({split.parts, batch, split.chunk}, f32);
  // Per thread, float32: a row's gates, din, dhid (3n each), hidden_n, h_prev, grad_y or z
  // (n each).
  Tensor scratch = split.thread_scratch(12, f32);
  const auto order = time_order(batch == 0 ? 0 : steps, !reverse);
  // Pointers taken once: data_ptr checks the dtype on every call.
  float* dh_p = dh.data_ptr<float>();
  float* rec_p = rec.data_ptr<float>();
  float* scratch_p = scratch.data_ptr<float>();
  uint16_t* dgates_in_p = bits<uint16_t>(dgates_in);
  uint16_t* dgates_hid_p = bits<uint16_t>(dgates_hid);
  const uint16_t* grad_y_p = bits<const uint16_t>(grad_y);
  const uint16_t* h_prev_p = bits<const uint16_t>(h_prev);
  const uint16_t* gates_p = bits<const uint16_t>(gates);
  const uint16_t* hidden_n_p = bits<const uint16_t>(hidden_n);
  split.run([&](int64_t first, int64_t stride) {
    // Part p's row b where step `later` (processed just before) was active: the recurrent
    // gradient and the direct path through that step's z (widened into `z`); an inactive
    // step passes dh through unchanged.
    const auto carry_from = [&](int64_t p, int64_t later, int64_t b, float* z) {
      if (!is_active(lengths, b, later)) return;
      const int64_t u0 = split.begin(p), n = split.end(p) - u0;
      widen_row(gates_p + 3 * (state * later + b * hidden) + hidden + u0, z, n);
      gru_carry_row<float>(dh_p + b * hidden + u0, rec_p + p * batch * split.chunk + b * n, z,
                           n);
    };
    const auto scratch_row = [&] {
      return scratch_p + split.thread(first) * 12 * split.chunk;
    };
    const bool finished = split.steps(order, [&](int64_t k, int64_t t) {
      const int64_t later = k == 0 ? -1 : order[k - 1];
      uint16_t* dinp = dgates_in_p + 3 * state * t;
      uint16_t* dhidp = dgates_hid_p + 3 * state * t;
      for (int64_t p = first; p < split.parts; p += stride) {
        const int64_t u0 = split.begin(p), n = split.end(p) - u0;
        if (later >= 0) products[p].apply(rec_p + p * batch * split.chunk,
                                          dgates_hid_p + 3 * state * later);
        split.for_rows(batch, 6 * n, [&](int64_t begin, int64_t end) {
          float* g = scratch_row();
          float* din = g + 3 * n;
          float* dhid = din + 3 * n;
          float* hn = dhid + 3 * n;
          float* hp = hn + n;
          float* gy = hp + n;
          for (int64_t b = begin; b < end; ++b) {
            const int64_t row = b * hidden + u0, grow = 3 * b * hidden + u0;  // gate j: + j H
            if (later >= 0) carry_from(p, later, b, gy);
            if (!is_active(lengths, b, t)) {
              for (int64_t j = 0; j < 3; ++j) {
                std::fill_n(dinp + grow + j * hidden, n, uint16_t{0});
                std::fill_n(dhidp + grow + j * hidden, n, uint16_t{0});
              }
              continue;
            }
            widen_row(grad_y_p + state * t + row, gy, n);
            add_row<float>(dh_p + row, gy, n);  // dh += grad_y[t]
            for (int64_t j = 0; j < 3; ++j) {
              widen_row(gates_p + 3 * state * t + grow + j * hidden, g + j * n, n);
            }
            widen_row(hidden_n_p + state * t + row, hn, n);
            widen_row(h_prev_p + state * t + row, hp, n);
            gru_bwd_row<float>(dh_p + row, g, hn, hp, din, dhid, n);
            for (int64_t j = 0; j < 3; ++j) {
              narrow_row(din + j * n, dinp + grow + j * hidden, n);
              narrow_row(dhid + j * n, dhidp + grow + j * hidden, n);
            }
          }
        });
      }
    });
    if (!finished) return;
    if (order.empty()) return;
    for (int64_t p = first; p < split.parts; p += stride) {  // the gradient of h0
      products[p].apply(rec_p + p * batch * split.chunk, dgates_hid_p + 3 * state * order.back());
      split.for_rows(batch, split.end(p) - split.begin(p), [&](int64_t begin, int64_t end) {
        float* z = scratch_row();
        for (int64_t b = begin; b < end; ++b) carry_from(p, order.back(), b, z);
      });
    }
  });
  return {dgates_in, dgates_hid, dh.to(at::kBFloat16)};
}

}  // namespace fusedrnn::cpu
