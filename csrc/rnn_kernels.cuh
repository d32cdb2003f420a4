// Elman RNN fused pointwise step kernels (tanh, or relu when `relu`): one thread per (row b,
// hidden unit j). Per step the host loop (csrc/recurrence.cpp) runs
//   forward   y[t] = xproj[t] + bias + h @ W_hh^T (one addmm into y[t]); rnn_fwd_step
//   backward  rnn_bwd_step; rec = dpre[t] @ W_hh
// The backward takes the activation's derivative from y: 1 - y^2 (tanh), y > 0 (relu).
// Kernel templates and their typed launchers; instantiated once per dtype in
// kernels_<dtype>.cu, dispatched on the dtype in step_launchers.cpp (kernels.h).
// csrc/emulation/ compiles them for the CPU too (elementwise_launch.cuh).
#pragma once

#include "cell_math.cuh"

namespace fusedrnn {

__device__ __forceinline__ float rnn_activate(float pre, bool relu) {
  return relu ? (pre < 0.0f ? 0.0f : pre) : tanhf(pre);  // NaN passes, as in torch.relu
}

template <typename scalar_t>
__global__ void rnn_fwd_step_kernel(scalar_t* __restrict__ y,
                                    const scalar_t* __restrict__ h_prev,
                                    scalar_t* __restrict__ h_next,
                                    const int64_t* __restrict__ lengths, int64_t t,
                                    int64_t batch, int64_t hidden, bool relu) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const float h = rnn_activate(static_cast<float>(y[idx]), relu);
  const bool active = is_active(lengths, idx / hidden, t);
  y[idx] = active ? h : 0.0f;
  h_next[idx] = active ? static_cast<scalar_t>(h) : h_prev[idx];
}

template <typename scalar_t>
__global__ void rnn_bwd_step_kernel(const scalar_t* __restrict__ grad_y,
                                    const scalar_t* __restrict__ rec,
                                    float* __restrict__ dh_total,
                                    const scalar_t* __restrict__ y,
                                    scalar_t* __restrict__ dpre,
                                    const int64_t* __restrict__ lengths, int64_t t,
                                    int64_t t_prev, int64_t batch, int64_t hidden, bool relu) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden;
  const bool active = is_active(lengths, b, t);
  const bool prev_active = t_prev < 0 || is_active(lengths, b, t_prev);
  // An inactive step passes the gradient of h through unchanged.
  const float carry = prev_active ? static_cast<float>(rec[idx]) : dh_total[idx];
  const float dh = carry + (active ? static_cast<float>(grad_y[idx]) : 0.0f);
  dh_total[idx] = dh;
  const float out = static_cast<float>(y[idx]);
  // relu: selected as torch's threshold_backward selects (a NaN output passes dh; an
  // infinite dh at an output of 0 gives 0, where a product with a 0/1 slope gives NaN).
  const float d = relu ? (out <= 0.0f ? 0.0f : dh) : dh * (1.0f - out * out);
  dpre[idx] = active ? d : 0.0f;
}

template <typename scalar_t>
void rnn_fwd_step_typed(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                        const at::Tensor& lengths, int64_t t, bool relu) {
  const int64_t batch = y.size(0), hidden = y.size(1);
  launch_elementwise(rnn_fwd_step_kernel<scalar_t>, batch * hidden, y.data_ptr<scalar_t>(),
      h_prev.data_ptr<scalar_t>(), h_next.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch,
      hidden, relu);
}

template <typename scalar_t>
void rnn_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
                        const at::Tensor& dh_total, const at::Tensor& y, const at::Tensor& dpre,
                        const at::Tensor& lengths, int64_t t, int64_t t_prev, bool relu) {
  const int64_t batch = y.size(0), hidden = y.size(1);
  launch_elementwise(rnn_bwd_step_kernel<scalar_t>, batch * hidden, grad_y.data_ptr<scalar_t>(),
      rec.data_ptr<scalar_t>(), dh_total.data_ptr<float>(), y.data_ptr<scalar_t>(),
      dpre.data_ptr<scalar_t>(), lengths_ptr(lengths), t, t_prev, batch, hidden, relu);
}

}  // namespace fusedrnn
