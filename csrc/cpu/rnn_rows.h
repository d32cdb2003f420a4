// The Elman RNN cell on one row, forward and backward, shared by the float32/float64 time
// loops (rnn_cpu.cpp) and the bfloat16 ones (rnn_bf16_cpu.cpp, in float32).
#pragma once

#include <cstdint>

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
    for (int64_t j = 0; j < hidden; ++j) dpre[j] = y[j] > 0 ? dh[j] : scalar_t(0);
  } else {
    for (int64_t j = 0; j < hidden; ++j) dpre[j] = flush(dh[j] * (1 - y[j] * y[j]));
  }
}

}  // namespace fusedrnn::cpu
