// The CUDA op functions of fusedrnn._C, registered by bindings.cpp: the stepwise recurrence
// ops (recurrence.cpp), the persistent ones (persistent/persistent_ops.cpp, which falls back
// on the stepwise ones for calls with no step, row or unit), and the host functions behind
// the module's Python methods. Contracts: fusedrnn/backends/recurrence.py and the files
// named.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace fusedrnn {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_recurrence_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, const Tensor&, const Tensor&, bool);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_recurrence_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_proj_recurrence_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, const Tensor&, const Tensor&, bool);
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_recurrence_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor, Tensor> gru_recurrence_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const Tensor&, bool);
std::tuple<Tensor, Tensor> rnn_recurrence_fwd(const Tensor&, const std::optional<Tensor>&,
                                              const Tensor&, const Tensor&,
                                              const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor> rnn_recurrence_bwd(const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, const std::optional<Tensor>&, bool,
                                              bool);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_persistent_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool, bool, int64_t, bool);
std::tuple<Tensor, Tensor, Tensor> lstm_persistent_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, const Tensor&, const Tensor&, bool, int64_t, bool);
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_persistent_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const std::optional<Tensor>&, bool, bool, int64_t, bool);
std::tuple<Tensor, Tensor, Tensor> gru_persistent_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const Tensor&, bool, int64_t, bool);
int persistent_occupancy(const std::string&, at::ScalarType, int64_t, int, int);
namespace persistent {
double barrier_latency_us(const std::string&, int, int, int, int);
}  // namespace persistent

}  // namespace fusedrnn

// Registers the functions above as the kernels of their ops, in the library `m` (fusedrnn's
// CUDA kernels in bindings.cpp, the host emulation's in emulation/cuda_emulation.cpp).
#define FUSEDRNN_IMPLEMENT_CUDA_OPS(m) \
  m.impl("lstm_recurrence_fwd", TORCH_FN(fusedrnn::lstm_recurrence_fwd)); \
  m.impl("lstm_recurrence_bwd", TORCH_FN(fusedrnn::lstm_recurrence_bwd)); \
  m.impl("lstm_proj_recurrence_fwd", TORCH_FN(fusedrnn::lstm_proj_recurrence_fwd)); \
  m.impl("lstm_proj_recurrence_bwd", TORCH_FN(fusedrnn::lstm_proj_recurrence_bwd)); \
  m.impl("gru_recurrence_fwd", TORCH_FN(fusedrnn::gru_recurrence_fwd)); \
  m.impl("gru_recurrence_bwd", TORCH_FN(fusedrnn::gru_recurrence_bwd)); \
  m.impl("rnn_recurrence_fwd", TORCH_FN(fusedrnn::rnn_recurrence_fwd)); \
  m.impl("rnn_recurrence_bwd", TORCH_FN(fusedrnn::rnn_recurrence_bwd)); \
  m.impl("lstm_persistent_fwd", TORCH_FN(fusedrnn::lstm_persistent_fwd)); \
  m.impl("lstm_persistent_bwd", TORCH_FN(fusedrnn::lstm_persistent_bwd)); \
  m.impl("gru_persistent_fwd", TORCH_FN(fusedrnn::gru_persistent_fwd)); \
  m.impl("gru_persistent_bwd", TORCH_FN(fusedrnn::gru_persistent_bwd))
