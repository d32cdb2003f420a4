// Launchers of the fused pointwise step kernels (one per cell and direction of time).
//
// Shapes: B batch, H hidden, G = 4H (LSTM), 3H (GRU) or H (RNN). Every tensor is a contiguous CUDA
// tensor of the input dtype unless marked float32; "in/out" ones are updated in place, the
// others are read only or written only as stated. lengths is int64 (B,) or undefined, and
// step t of row b is active while t < lengths[b]. Launches go to the current stream.
//
// The time loops (recurrence.cpp) take the device of these tensors and its guard from here:
// CUDA in fusedrnn._C; the CPU in the host emulation of the kernels (elementwise_launch.cuh).
#pragma once

#include <ATen/ATen.h>

#ifndef FUSEDRNN_HOST_EMULATION
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fusedrnn {

#ifdef FUSEDRNN_HOST_EMULATION
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
struct KernelDeviceGuard {
  explicit KernelDeviceGuard(c10::Device) {}
};
#else
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
using KernelDeviceGuard = c10::cuda::CUDAGuard;
#endif

// gates (B,4H) in: pre-activations, out: activated i,f,g,o (kept for backward);
// c_prev, h_prev (B,H) read; cell (B,H) out: c, held on inactive rows (kept for backward);
// y (B,H) out: h, zero on inactive rows; h_next (B,H) out: h, held on inactive rows.
void lstm_fwd_step(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& cell,
                   const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                   const at::Tensor& lengths, int64_t t);

// grad_y (B,H) read; rec (B,H) read: dgates of the previously processed step @ W_hh, or
// grad_h_n at the first step (t_prev < 0); dh_total (B,H) float32 in/out: the gradient of
// h of the previous processed step in, of this step out; gates, cell, c_prev read;
// dc (B,H) float32 in/out; dgates (B,4H) out: pre-activation gradients, zero if inactive.
void lstm_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                   const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& c_prev,
                   const at::Tensor& dc, const at::Tensor& dgates, const at::Tensor& lengths,
                   int64_t t, int64_t t_prev);

// gates (B,3H) in: x W_ih^T + b_ih, out: activated r,z,n (kept); hidden_gates (B,3H) read:
// h W_hh^T + b_hh; hidden_n (B,H) out: its n block (kept); h_prev read; y, h_next as LSTM.
void gru_fwd_step(const at::Tensor& gates, const at::Tensor& hidden_gates,
                  const at::Tensor& hidden_n, const at::Tensor& y, const at::Tensor& h_prev,
                  const at::Tensor& h_next, const at::Tensor& lengths, int64_t t);

// grad_y, rec, dh_total as LSTM, except that rec excludes the dh * z term, added here from
// z_prev (B,3H), the gates of the previously processed step; gates, hidden_n, h_prev (the
// state entering step t) read; dgates_in (B,3H) out: (dr, dz, dn); dgates_hid (B,3H) out:
// (dr, dz, dn * r).
void gru_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& gates_prev, const at::Tensor& gates,
                  const at::Tensor& hidden_n, const at::Tensor& h_prev,
                  const at::Tensor& dgates_in, const at::Tensor& dgates_hid,
                  const at::Tensor& lengths, int64_t t, int64_t t_prev);

// The LSTM with a projection (proj_size P; lstm_proj_kernels.cuh). gates, c_prev, cell as
// lstm_fwd_step; r (B,H) out: o * tanh(c), which the loop projects into y[t].
void lstm_proj_fwd_step(const at::Tensor& gates, const at::Tensor& c_prev,
                        const at::Tensor& cell, const at::Tensor& r, const at::Tensor& lengths,
                        int64_t t);

// y (B,P) in: the projected state of step t, out: zero on inactive rows; h_prev (B,P) read;
// h_next (B,P) out: y on active rows, h_prev held on the others.
void hold_state_step(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                     const at::Tensor& lengths, int64_t t);

// grad_y, rec, dh_total (B,P) as lstm_bwd_step; dh_step (B,P) out: the gradient of the
// projected state of step t, zero on inactive rows (the loop computes dr = dh_step @ W_hr).
void proj_dh_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& dh_step, const at::Tensor& lengths, int64_t t,
                  int64_t t_prev);

// dr (B,H) read: the gradient of o * tanh(c); gates, cell, c_prev, dc, dgates as
// lstm_bwd_step (dc unchanged and dgates zero on inactive rows).
void lstm_proj_bwd_step(const at::Tensor& dr, const at::Tensor& gates, const at::Tensor& cell,
                        const at::Tensor& c_prev, const at::Tensor& dc, const at::Tensor& dgates,
                        const at::Tensor& lengths, int64_t t);

// The Elman RNN (rnn_kernels.cuh; relu: relu, else tanh). y (B,H) in: the pre-activation
// x W_ih^T + b + h_prev W_hh^T, out: h, zero on inactive rows; h_prev (B,H) read; h_next
// (B,H) out: h, held on inactive rows.
void rnn_fwd_step(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                  const at::Tensor& lengths, int64_t t, bool relu);

// grad_y, rec, dh_total as lstm_bwd_step; y (B,H) read: the forward's output of step t;
// dpre (B,H) out: the gradient of the pre-activation, zero on inactive rows.
void rnn_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& y, const at::Tensor& dpre, const at::Tensor& lengths,
                  int64_t t, int64_t t_prev, bool relu);

}  // namespace fusedrnn
