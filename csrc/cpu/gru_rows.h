// The GRU cell on one row, forward and backward, shared by the float32/float64 time loops
// (gru_cpu.cpp) and the bfloat16 ones (gru_bf16_cpu.cpp, in float32).
#pragma once

#include <cstdint>
#include <type_traits>

#include "avx512_rows.h"
#include "cpu_math.h"

namespace fusedrnn::cpu {

// One row of the forward step, for n hidden units: gate k (r, z, n) of the units is at
// xg + k * xs (x W_ih^T, read), b_ih + k * xs and b_hh + k * xs (read), g + k * xs (written:
// activated) and hg + k * hs (h W_hh^T, read); h_prev (n) read; hidden_n, y, h_next (n)
// written: h_n + b_n, h, h. xg, the biases and g share a stride: the (B, 3H) layout's H, or
// n where a split loop copies them per chunk.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void gru_fwd_row(const scalar_t* __restrict__ xg,
                                      const scalar_t* __restrict__ b_ih,
                                      const scalar_t* __restrict__ hg, scalar_t* __restrict__ g,
                                      const scalar_t* __restrict__ b_hh,
                                      const scalar_t* __restrict__ h_prev,
                                      scalar_t* __restrict__ hidden_n, scalar_t* __restrict__ y,
                                      scalar_t* __restrict__ h_next, int64_t xs, int64_t hs,
                                      int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t br = b_hh[j], bz = b_hh[xs + j], bn = b_hh[2 * xs + j];
    const scalar_t r = sigmoid(xg[j] + b_ih[j] + hg[j] + br);
    const scalar_t z = sigmoid(xg[xs + j] + b_ih[xs + j] + hg[hs + j] + bz);
    const scalar_t hn = hg[2 * hs + j] + bn;
    const scalar_t nn = tanh(xg[2 * xs + j] + b_ih[2 * xs + j] + r * hn);
    const scalar_t h = flush(nn + z * (h_prev[j] - nn));
    g[j] = r;
    g[xs + j] = z;
    g[2 * xs + j] = nn;
    hidden_n[j] = hn;
    y[j] = h_next[j] = h;
  }
}

// One row of the backward step of an active row. dh (H) read: the gradient reaching h;
// gates (3H), hidden_n, h_prev (H) as saved; din, dhid (3H) written: the gradients of the
// input-side and hidden-side pre-activations (they differ in the n gate only).
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void gru_bwd_row(const scalar_t* __restrict__ dh,
                                      const scalar_t* __restrict__ gates,
                                      const scalar_t* __restrict__ hidden_n,
                                      const scalar_t* __restrict__ h_prev,
                                      scalar_t* __restrict__ din, scalar_t* __restrict__ dhid,
                                      int64_t hidden) {
  for (int64_t j = 0; j < hidden; ++j) {
    const scalar_t r = gates[j], z = gates[hidden + j], n = gates[2 * hidden + j];
    const scalar_t d_n = dh[j] * (1 - z) * (1 - n * n);
    const scalar_t d_z = dh[j] * (h_prev[j] - n) * z * (1 - z);
    const scalar_t d_r = d_n * hidden_n[j] * r * (1 - r);
    din[j] = dhid[j] = flush(d_r);
    din[hidden + j] = dhid[hidden + j] = flush(d_z);
    din[2 * hidden + j] = flush(d_n);
    dhid[2 * hidden + j] = flush(d_n * r);
  }
}

// dh (H) in/out = rec + dh * z: the recurrent gradient plus the direct path h' = ... z * h.
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void gru_carry_row(scalar_t* __restrict__ dh,
                                        const scalar_t* __restrict__ rec,
                                        const scalar_t* __restrict__ z, int64_t hidden) {
  for (int64_t j = 0; j < hidden; ++j) dh[j] = flush(rec[j] + dh[j] * z[j]);
}

// gru_fwd_row on the fastest path here.
template <typename scalar_t>
inline void gru_forward_row(const scalar_t* xg, const scalar_t* b_ih, const scalar_t* hg,
                            scalar_t* g, const scalar_t* b_hh, const scalar_t* h_prev,
                            scalar_t* hidden_n, scalar_t* y, scalar_t* h_next, int64_t xs,
                            int64_t hs, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (avx512_rows()) {
      gru_fwd_row_avx512(xg, b_ih, hg, g, b_hh, h_prev, hidden_n, y, h_next, xs, hs, n);
      return;
    }
  }
  gru_fwd_row<scalar_t>(xg, b_ih, hg, g, b_hh, h_prev, hidden_n, y, h_next, xs, hs, n);
}

}  // namespace fusedrnn::cpu
