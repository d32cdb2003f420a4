// GRU fused pointwise step kernels: one thread per (row b, hidden unit j); the cell's math
// in gru_cell.cuh.
// Kernel templates and their typed launchers; instantiated once per dtype in
// kernels_<dtype>.cu, dispatched on the dtype in step_launchers.cpp (kernels.h).
// csrc/emulation/ compiles them for the CPU too (elementwise_launch.cuh).
#pragma once

#include "gru_cell.cuh"

namespace fusedrnn {

template <typename scalar_t>
__global__ void gru_fwd_step_kernel(scalar_t* __restrict__ gates,
                                    const scalar_t* __restrict__ hidden_gates,
                                    scalar_t* __restrict__ hidden_n, scalar_t* __restrict__ y,
                                    const scalar_t* __restrict__ h_prev,
                                    scalar_t* __restrict__ h_next,
                                    const int64_t* __restrict__ lengths, int64_t t,
                                    int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  scalar_t* g = gates + b * 3 * hidden;
  const scalar_t* hg = hidden_gates + b * 3 * hidden;
  const float hn = hg[2 * hidden + j];
  const GruGates a = gru_activate(g[j], g[hidden + j], g[2 * hidden + j], hg[j],
                                  hg[hidden + j], hn);
  const float h = gru_state(a, h_prev[idx]);
  const bool active = is_active(lengths, b, t);
  g[j] = a.r;
  g[hidden + j] = a.z;
  g[2 * hidden + j] = a.n;
  hidden_n[idx] = hn;
  y[idx] = active ? h : 0.0f;
  h_next[idx] = active ? static_cast<scalar_t>(h) : h_prev[idx];
}

template <typename scalar_t>
__global__ void gru_bwd_step_kernel(const scalar_t* __restrict__ grad_y,
                                    const scalar_t* __restrict__ rec,
                                    float* __restrict__ dh_total,
                                    const scalar_t* __restrict__ gates_prev,
                                    const scalar_t* __restrict__ gates,
                                    const scalar_t* __restrict__ hidden_n,
                                    const scalar_t* __restrict__ h_prev,
                                    scalar_t* __restrict__ dgates_in,
                                    scalar_t* __restrict__ dgates_hid,
                                    const int64_t* __restrict__ lengths, int64_t t,
                                    int64_t t_prev, int64_t batch, int64_t hidden) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * hidden) return;
  const int64_t b = idx / hidden, j = idx % hidden;
  const bool active = is_active(lengths, b, t);
  float carry;
  if (t_prev < 0) {
    carry = rec[idx];  // the gradient of h_n
  } else if (is_active(lengths, b, t_prev)) {
    carry = static_cast<float>(rec[idx]) +
            dh_total[idx] * static_cast<float>(gates_prev[b * 3 * hidden + hidden + j]);
  } else {
    carry = dh_total[idx];  // an inactive step passes it through unchanged
  }
  const float dh = carry + (active ? static_cast<float>(grad_y[idx]) : 0.0f);
  dh_total[idx] = dh;
  scalar_t* din = dgates_in + b * 3 * hidden;
  scalar_t* dhid = dgates_hid + b * 3 * hidden;
  if (!active) {
    din[j] = din[hidden + j] = din[2 * hidden + j] = 0.0f;
    dhid[j] = dhid[hidden + j] = dhid[2 * hidden + j] = 0.0f;
    return;
  }
  const scalar_t* g = gates + b * 3 * hidden;
  const GruGates a{g[j], g[hidden + j], g[2 * hidden + j]};
  const GruGrads d = gru_backward(a, h_prev[idx], hidden_n[idx], dh);
  din[j] = d.d_r;
  din[hidden + j] = d.d_z;
  din[2 * hidden + j] = d.d_n;
  dhid[j] = d.d_r;
  dhid[hidden + j] = d.d_z;
  dhid[2 * hidden + j] = d.d_n * a.r;
}

template <typename scalar_t>
void gru_fwd_step_typed(const at::Tensor& gates, const at::Tensor& hidden_gates,
                  const at::Tensor& hidden_n, const at::Tensor& y, const at::Tensor& h_prev,
                  const at::Tensor& h_next, const at::Tensor& lengths, int64_t t) {
  const int64_t batch = hidden_n.size(0), hidden = hidden_n.size(1);
  launch_elementwise(gru_fwd_step_kernel<scalar_t>, batch * hidden, gates.data_ptr<scalar_t>(),
      hidden_gates.data_ptr<scalar_t>(), hidden_n.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
      h_prev.data_ptr<scalar_t>(), h_next.data_ptr<scalar_t>(), lengths_ptr(lengths), t, batch,
      hidden);
}

template <typename scalar_t>
void gru_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& gates_prev, const at::Tensor& gates,
                  const at::Tensor& hidden_n, const at::Tensor& h_prev,
                  const at::Tensor& dgates_in, const at::Tensor& dgates_hid,
                  const at::Tensor& lengths, int64_t t, int64_t t_prev) {
  const int64_t batch = hidden_n.size(0), hidden = hidden_n.size(1);
  launch_elementwise(gru_bwd_step_kernel<scalar_t>, batch * hidden, grad_y.data_ptr<scalar_t>(),
      rec.data_ptr<scalar_t>(), dh_total.data_ptr<float>(), gates_prev.data_ptr<scalar_t>(),
      gates.data_ptr<scalar_t>(), hidden_n.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
      dgates_in.data_ptr<scalar_t>(), dgates_hid.data_ptr<scalar_t>(), lengths_ptr(lengths), t,
      t_prev, batch, hidden);
}

}  // namespace fusedrnn
