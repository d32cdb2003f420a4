// The GRU cell's math (float32), gates r, z, n:
//   r, z = sigmoid(xg + hg);  n = tanh(xg_n + r * hg_n);  h' = n + z * (h - n),
// hg = h @ W_hh^T + b_hh: one definition for the step and persistent kernels.
#pragma once

#include "cell_math.cuh"

namespace fusedrnn {

struct GruGates {
  float r, z, n;
};

// The activated gates from the input side xg (with b_ih) and the hidden side hg (with b_hh).
__device__ __forceinline__ GruGates gru_activate(float x_r, float x_z, float x_n, float h_r,
                                                 float h_z, float h_n) {
  const float r = sigmoid(x_r + h_r);
  return {r, sigmoid(x_z + h_z), tanhf(x_n + r * h_n)};
}

__device__ __forceinline__ float gru_state(const GruGates& a, float h_prev) {
  return a.n + a.z * (h_prev - a.n);
}

// The input-side pre-activation gradients (dr, dz, dn) of one unit of an active step, from
// its activated gates, the state h_prev entering it, its saved hg_n and dh; the hidden side's
// are (dr, dz, dn * r).
struct GruGrads {
  float d_r, d_z, d_n;
};

__device__ __forceinline__ GruGrads gru_backward(const GruGates& a, float h_prev,
                                                 float hidden_n, float dh) {
  const float d_n = dh * (1.0f - a.z) * (1.0f - a.n * a.n);
  const float d_z = dh * (h_prev - a.n) * a.z * (1.0f - a.z);
  return {d_n * hidden_n * a.r * (1.0f - a.r), d_z, d_n};
}

}  // namespace fusedrnn
