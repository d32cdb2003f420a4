// The LSTM cell on one row, forward and backward, shared by the float32/float64 time loops
// (lstm_cpu.cpp) and the bfloat16 ones (lstm_bf16_cpu.cpp, in float32).
#pragma once

#include <cstdint>
#include <type_traits>

#include "avx512_rows.h"
#include "cpu_math.h"

namespace fusedrnn::cpu {

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

// lstm_fwd_row on the fastest path here.
template <typename scalar_t>
inline void lstm_forward_row(const scalar_t* xg, const scalar_t* hg, const scalar_t* bias,
                             scalar_t* g, int64_t xs, int64_t hs, const scalar_t* c_prev,
                             scalar_t* cell, scalar_t* y, scalar_t* h_next, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (avx512_rows()) {
      lstm_fwd_row_avx512(xg, hg, bias, g, xs, hs, c_prev, cell, y, h_next, n);
      return;
    }
  }
  lstm_fwd_row<scalar_t>(xg, hg, bias, g, xs, hs, c_prev, cell, y, h_next, n);
}

}  // namespace fusedrnn::cpu
