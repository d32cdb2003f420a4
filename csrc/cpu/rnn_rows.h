// The Elman RNN cell on one row, forward and backward, shared by the float32/float64 time
// loops (rnn_cpu.cpp) and the bfloat16 ones (rnn_bf16_cpu.cpp, in float32).
#pragma once

#include <cstdint>
#include <type_traits>

#include "avx512_rows.h"
#include "cpu_math.h"

namespace fusedrnn::cpu {

// One row of the forward step. xg, hg, bias (H) read: x W_ih^T, h W_hh^T, b_ih + b_hh;
// y, h_next (H) written: h.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void rnn_fwd_row(const scalar_t* __restrict__ xg,
                                      const scalar_t* __restrict__ hg,
                                      const scalar_t* __restrict__ bias,
                                      scalar_t* __restrict__ y, scalar_t* __restrict__ h_next,
                                      int64_t hidden, bool relu) {
  if (relu) {
    for (int64_t j = 0; j < hidden; ++j) {
      const scalar_t pre = xg[j] + hg[j] + bias[j];
      y[j] = h_next[j] = pre > 0 ? pre : (pre != pre ? pre : scalar_t(0));  // NaN passes
    }
  } else {
    for (int64_t j = 0; j < hidden; ++j) {
      y[j] = h_next[j] = flush(tanh(xg[j] + hg[j] + bias[j]));
    }
  }
}

// One row of the backward step. dh, y (H) read; dpre (H) written: dh * act'(pre).
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void rnn_bwd_row(const scalar_t* __restrict__ dh,
                                      const scalar_t* __restrict__ y,
                                      scalar_t* __restrict__ dpre, int64_t hidden, bool relu) {
  if (relu) {
    // Selected as torch's threshold_backward selects: a NaN output passes dh, and an
    // infinite dh at an output of 0 gives 0 (a product with a 0/1 slope would give NaN).
    for (int64_t j = 0; j < hidden; ++j) dpre[j] = y[j] <= 0 ? scalar_t(0) : dh[j];
  } else {
    for (int64_t j = 0; j < hidden; ++j) dpre[j] = flush(dh[j] * (1 - y[j] * y[j]));
  }
}

// rnn_fwd_row on the fastest path here (relu's needs no transcendental: it stays portable).
template <typename scalar_t>
inline void rnn_forward_row(const scalar_t* xg, const scalar_t* hg, const scalar_t* bias,
                            scalar_t* y, scalar_t* h_next, int64_t hidden, bool relu) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (!relu && avx512_rows()) {
      rnn_tanh_fwd_row_avx512(xg, hg, bias, y, h_next, hidden);
      return;
    }
  }
  rnn_fwd_row<scalar_t>(xg, hg, bias, y, h_next, hidden, relu);
}

}  // namespace fusedrnn::cpu
