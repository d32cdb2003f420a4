// The typed launchers of the step kernels (lstm_kernels.cuh, gru_kernels.cuh, ...), declared
// for the host code that dispatches on the dtype; each dtype's instantiations are compiled
// in their own translation unit, kernels_<dtype>.cu, so the builds run in parallel.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

// The dtypes the kernels are built for (math in float32 inside).
#define FUSEDRNN_DISPATCH(TYPE, NAME, ...)                     \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace fusedrnn {

template <typename scalar_t>
void lstm_fwd_step_typed(const at::Tensor& gates, const at::Tensor& c_prev,
    const at::Tensor& cell, const at::Tensor& y, const at::Tensor& h_prev,
    const at::Tensor& h_next, const at::Tensor& lengths, int64_t t);

template <typename scalar_t>
void lstm_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
    const at::Tensor& dh_total, const at::Tensor& gates, const at::Tensor& cell,
    const at::Tensor& c_prev, const at::Tensor& dc, const at::Tensor& dgates,
    const at::Tensor& lengths, int64_t t, int64_t t_prev);

template <typename scalar_t>
void gru_fwd_step_typed(const at::Tensor& gates, const at::Tensor& hidden_gates,
    const at::Tensor& hidden_n, const at::Tensor& y, const at::Tensor& h_prev,
    const at::Tensor& h_next, const at::Tensor& lengths, int64_t t);

template <typename scalar_t>
void gru_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
    const at::Tensor& dh_total, const at::Tensor& gates_prev, const at::Tensor& gates,
    const at::Tensor& hidden_n, const at::Tensor& h_prev, const at::Tensor& dgates_in,
    const at::Tensor& dgates_hid, const at::Tensor& lengths, int64_t t, int64_t t_prev);

template <typename scalar_t>
void lstm_proj_fwd_step_typed(const at::Tensor& gates, const at::Tensor& c_prev,
    const at::Tensor& cell, const at::Tensor& r, const at::Tensor& lengths, int64_t t);

template <typename scalar_t>
void hold_state_step_typed(const at::Tensor& y, const at::Tensor& h_prev,
    const at::Tensor& h_next, const at::Tensor& lengths, int64_t t);

template <typename scalar_t>
void proj_dh_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
    const at::Tensor& dh_total, const at::Tensor& dh_step, const at::Tensor& lengths, int64_t t,
    int64_t t_prev);

template <typename scalar_t>
void lstm_proj_bwd_step_typed(const at::Tensor& dr, const at::Tensor& gates,
    const at::Tensor& cell, const at::Tensor& c_prev, const at::Tensor& dc,
    const at::Tensor& dgates, const at::Tensor& lengths, int64_t t);

template <typename scalar_t>
void rnn_fwd_step_typed(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
    const at::Tensor& lengths, int64_t t, bool relu);

template <typename scalar_t>
void rnn_bwd_step_typed(const at::Tensor& grad_y, const at::Tensor& rec,
    const at::Tensor& dh_total, const at::Tensor& y, const at::Tensor& dpre,
    const at::Tensor& lengths, int64_t t, int64_t t_prev, bool relu);

// Instantiates the typed launchers for the dtype T (once, in kernels_<dtype>.cu).
using TensorRef = const at::Tensor&;
#define FUSEDRNN_INSTANTIATE_STEP_LAUNCHERS(T) \
  template void lstm_fwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, TensorRef, int64_t); \
  template void lstm_bwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, TensorRef, TensorRef, TensorRef, int64_t, int64_t); \
  template void gru_fwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, TensorRef, int64_t); \
  template void gru_bwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, int64_t, int64_t); \
  template void lstm_proj_fwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, int64_t); \
  template void hold_state_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, int64_t); \
  template void proj_dh_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      int64_t, int64_t); \
  template void lstm_proj_bwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, TensorRef, TensorRef, int64_t); \
  template void rnn_fwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, int64_t, \
      bool); \
  template void rnn_bwd_step_typed<T>(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, \
      TensorRef, int64_t, int64_t, bool);

}  // namespace fusedrnn
