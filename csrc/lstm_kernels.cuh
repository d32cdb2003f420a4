// LSTM fused pointwise step kernels: one thread per (row b, hidden unit j). Gates i, f, g, o.
// Kernel templates and their typed launchers; instantiated once per dtype in
// kernels_<dtype>.cu, dispatched on the dtype in step_launchers.cpp (kernels.h).
// csrc/emulation/ compiles them for the CPU too (elementwise_launch.cuh).
#pragma once

#include "lstm_cell.cuh"

namespace fusedrnn {

template <typename scalar_t>
__global__ void lstm_fwd_step_kernel(scalar_t* __restrict__ gates,
                                     const scalar_t* __restrict__ c_prev,
                                     scalar_t* __restrict__ cell, scalar_t* __restrict__ y,
                                     const scalar_t* __restrict__ h_prev,
                                     scalar_t* __restrict__ h_next,
                                     const int64_t* __restrict__ lengths, int64_t t,
                                     int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  scalar_t* g = gates + b * 4 * hidden;
  const LstmGates a = lstm_activate(g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]);
  const float cp = static_cast<float>(c_prev[idx]);
  const float c = lstm_cell_state(a, cp);
  const float h = a.o * tanhf(c);
  const bool active = is_active(lengths, b, t);
  g[j] = a.i;
  g[hidden + j] = a.f;
  g[2 * hidden + j] = a.g;
  g[3 * hidden + j] = a.o;
  cell[idx] = active ? c : cp;
  y[idx] = active ? h : 0.0f;
  h_next[idx] = active ? static_cast<scalar_t>(h) : h_prev[idx];
}

template <typename scalar_t>
__global__ void lstm_bwd_step_kernel(const scalar_t* __restrict__ grad_y,
                                     const scalar_t* __restrict__ rec,
                                     float* __restrict__ dh_total,
                                     const scalar_t* __restrict__ gates,
                                     const scalar_t* __restrict__ cell,
                                     const scalar_t* __restrict__ c_prev,
                                     float* __restrict__ dc, scalar_t* __restrict__ dgates,
                                     const int64_t* __restrict__ lengths, int64_t t,
                                     int64_t t_prev, int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  const bool active = is_active(lengths, b, t);
  const bool prev_active = t_prev < 0 || is_active(lengths, b, t_prev);
  // An inactive step passes the gradient of h through unchanged.
  const float carry = prev_active ? static_cast<float>(rec[idx]) : dh_total[idx];
  const float dh = carry + (active ? static_cast<float>(grad_y[idx]) : 0.0f);
  dh_total[idx] = dh;
  scalar_t* dg = dgates + b * 4 * hidden;
  if (!active) {
    dg[j] = dg[hidden + j] = dg[2 * hidden + j] = dg[3 * hidden + j] = 0.0f;
    return;
  }
  const scalar_t* g = gates + b * 4 * hidden;
  const LstmGates a{g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]};
  const LstmGrads d = lstm_backward(a, c_prev[idx], cell[idx], dh, dc[idx]);
  dg[j] = d.d_i;
  dg[hidden + j] = d.d_f;
  dg[2 * hidden + j] = d.d_g;
  dg[3 * hidden + j] = d.d_o;
  dc[idx] = d.dc_prev;
}

template <typename scalar_t>
void lstm_fwd_step_typed(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& cell,
                   const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                   const at::Tensor& lengths, int64_t t) {
  const int64_t batch = cell.size(0), hidden = cell.size(1);
  launch_elementwise(lstm_fwd_step_kernel<scalar_t>, batch * hidden, gates.data_ptr<scalar_t>(),
      c_prev.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
      h_prev.data_ptr<scalar_t>(), h_next.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch,
      hidden);
}

template <typename scalar_t>
void lstm_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
    const at::Tensor& dh_total,
                   const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& c_prev,
                   const at::Tensor& dc, const at::Tensor& dgates, const at::Tensor& lengths,
                   int64_t t, int64_t t_prev) {
  const int64_t batch = cell.size(0), hidden = cell.size(1);
  launch_elementwise(lstm_bwd_step_kernel<scalar_t>, batch * hidden, grad_y.data_ptr<scalar_t>(),
      rec.data_ptr<scalar_t>(), dh_total.data_ptr<float>(), gates.data_ptr<scalar_t>(),
      cell.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), dc.data_ptr<float>(),
      dgates.data_ptr<scalar_t>(), lengths_ptr(lengths), t, t_prev, batch, hidden);
}

}  // namespace fusedrnn
