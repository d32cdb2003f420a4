// Step kernels of the LSTM with a projection (proj_size P): the state h = r @ W_hr^T has P
// features, r = o * tanh(c) has H. Per step the host loop runs (csrc/recurrence.cpp):
//   forward   gates = xproj + bias + h @ W_hh^T; lstm_proj_fwd_step (B,H); y[t] = r @ W_hr^T;
//             hold_state_step (B,P)
//   backward  proj_dh_step (B,P); dr = dh_steps[t] @ W_hr; lstm_proj_bwd_step (B,H);
//             rec = dgates[t] @ W_hh
// One thread per (row b, unit j). Kernel templates and their typed launchers, instantiated
// once per dtype in kernels_<dtype>.cu.
// csrc/emulation/ compiles them for the CPU too (elementwise_launch.cuh).
#pragma once

#include "lstm_cell.cuh"

namespace fusedrnn {

template <typename scalar_t>
__global__ void lstm_proj_fwd_step_kernel(scalar_t* __restrict__ gates,
                                          const scalar_t* __restrict__ c_prev,
                                          scalar_t* __restrict__ cell, scalar_t* __restrict__ r,
                                          const int64_t* __restrict__ lengths, int64_t t,
                                          int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  scalar_t* g = gates + b * 4 * hidden;
  const LstmGates a = lstm_activate(g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]);
  const float cp = static_cast<float>(c_prev[idx]);
  const float c = lstm_cell_state(a, cp);
  g[j] = a.i;
  g[hidden + j] = a.f;
  g[2 * hidden + j] = a.g;
  g[3 * hidden + j] = a.o;
  cell[idx] = is_active(lengths, b, t) ? c : cp;
  r[idx] = a.o * tanhf(c);  // projected and masked by the next two stages
}

template <typename scalar_t>
__global__ void hold_state_step_kernel(scalar_t* __restrict__ y,
                                       const scalar_t* __restrict__ h_prev,
                                       scalar_t* __restrict__ h_next,
                                       const int64_t* __restrict__ lengths, int64_t t,
                                       int64_t batch, int64_t state) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * state) return;
  if (is_active(lengths, idx / state, t)) {
    h_next[idx] = y[idx];
  } else {
    y[idx] = 0.0f;
    h_next[idx] = h_prev[idx];
  }
}

template <typename scalar_t>
__global__ void proj_dh_step_kernel(const scalar_t* __restrict__ grad_y,
                                    const scalar_t* __restrict__ rec,
                                    float* __restrict__ dh_total, scalar_t* __restrict__ dh_step,
                                    const int64_t* __restrict__ lengths, int64_t t,
                                    int64_t t_prev, int64_t batch, int64_t state) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * state) return;
  const int64_t b = idx / state;
  const bool active = is_active(lengths, b, t);
  const bool prev_active = t_prev < 0 || is_active(lengths, b, t_prev);
  const float carry = prev_active ? static_cast<float>(rec[idx]) : dh_total[idx];
  const float dh = carry + (active ? static_cast<float>(grad_y[idx]) : 0.0f);
  dh_total[idx] = dh;
  dh_step[idx] = active ? dh : 0.0f;
}

template <typename scalar_t>
__global__ void lstm_proj_bwd_step_kernel(const scalar_t* __restrict__ dr,
                                          const scalar_t* __restrict__ gates,
                                          const scalar_t* __restrict__ cell,
                                          const scalar_t* __restrict__ c_prev,
                                          float* __restrict__ dc, scalar_t* __restrict__ dgates,
                                          const int64_t* __restrict__ lengths, int64_t t,
                                          int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  scalar_t* dg = dgates + b * 4 * hidden;
  if (!is_active(lengths, b, t)) {
    dg[j] = dg[hidden + j] = dg[2 * hidden + j] = dg[3 * hidden + j] = 0.0f;
    return;
  }
  const scalar_t* g = gates + b * 4 * hidden;
  const LstmGates a{g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]};
  const LstmGrads d = lstm_backward(a, c_prev[idx], cell[idx], dr[idx], dc[idx]);
  dg[j] = d.d_i;
  dg[hidden + j] = d.d_f;
  dg[2 * hidden + j] = d.d_g;
  dg[3 * hidden + j] = d.d_o;
  dc[idx] = d.dc_prev;
}

template <typename scalar_t>
void lstm_proj_fwd_step_typed(const at::Tensor& gates, const at::Tensor& c_prev,
                              const at::Tensor& cell, const at::Tensor& r,
                              const at::Tensor& lengths, int64_t t) {
  const int64_t batch = cell.size(0), hidden = cell.size(1);
  launch_elementwise(lstm_proj_fwd_step_kernel<scalar_t>, batch * hidden,
      gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(),
      r.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch, hidden);
}

template <typename scalar_t>
void hold_state_step_typed(const at::Tensor& y, const at::Tensor& h_prev,
                           const at::Tensor& h_next, const at::Tensor& lengths, int64_t t) {
  const int64_t batch = y.size(0), state = y.size(1);
  launch_elementwise(hold_state_step_kernel<scalar_t>, batch * state, y.data_ptr<scalar_t>(),
      h_prev.data_ptr<scalar_t>(), h_next.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch,
      state);
}

template <typename scalar_t>
void proj_dh_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
                        const at::Tensor& dh_total, const at::Tensor& dh_step,
                        const at::Tensor& lengths, int64_t t, int64_t t_prev) {
  const int64_t batch = rec.size(0), state = rec.size(1);
  launch_elementwise(proj_dh_step_kernel<scalar_t>, batch * state, grad_y.data_ptr<scalar_t>(),
      rec.data_ptr<scalar_t>(), dh_total.data_ptr<float>(), dh_step.data_ptr<scalar_t>(),
      lengths_ptr(lengths), t, t_prev, batch, state);
}

template <typename scalar_t>
void lstm_proj_bwd_step_typed(const at::Tensor& dr, const at::Tensor& gates,
                              const at::Tensor& cell, const at::Tensor& c_prev,
                              const at::Tensor& dc, const at::Tensor& dgates,
                              const at::Tensor& lengths, int64_t t) {
  const int64_t batch = cell.size(0), hidden = cell.size(1);
  launch_elementwise(lstm_proj_bwd_step_kernel<scalar_t>, batch * hidden, dr.data_ptr<scalar_t>(),
      gates.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
      dc.data_ptr<float>(), dgates.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch, hidden);
}

}  // namespace fusedrnn
