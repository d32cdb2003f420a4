// The typed launchers of params.h: one cooperative launch per call after checking that the
// grid can be resident at once (a cooperative grid that cannot would fail to launch; a
// grid barrier across blocks that are not all resident would never return).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "persistent/gru_persistent.cuh"
#include "persistent/lstm_persistent.cuh"

namespace fusedrnn {
namespace persistent {

// -1 when the kernel holds no code for compute capability 8.0+ (a build for older
// architectures only, whose kernels are __trap() stubs), else the occupancy.
template <typename KernelFn>
int blocks_per_sm_of(KernelFn kernel, int64_t smem) {
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.ptxVersion < 80) return -1;
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem > limit) return 0;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                               static_cast<size_t>(smem)));
  return per_sm;
}

template <typename KernelFn, typename Params>
void launch_cooperative(KernelFn kernel, const Params& params, int blocks, int64_t smem,
                        const char* name) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int per_sm = blocks_per_sm_of(kernel, smem);
  TORCH_CHECK(per_sm >= 0, "fusedrnn cuda backend: the ", name, " kernel was not built for "
              "compute capability 8.0 or newer (see FUSEDRNN_CUDA_ARCHS)");
  TORCH_CHECK(static_cast<int64_t>(per_sm) * sms >= blocks, "fusedrnn cuda backend: the ",
              name, " kernel needs ", blocks, " blocks of ", smem,
              " bytes of shared memory resident at once, but this GPU holds ", per_sm * sms,
              " (", per_sm, " per multiprocessor); the stepwise kernels run such calls");
  Params copy = params;
  void* args[] = {&copy};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                                             dim3(kThreads), args, static_cast<size_t>(smem),
                                             at::cuda::getCurrentCUDAStream()));
}

template <typename T>
void launch(const LstmFwdParams<T>& p, int blocks, int64_t smem) {
  launch_cooperative(lstm_fwd_persistent_kernel<T>, p, blocks, smem, "persistent LSTM forward");
}

template <typename T>
void launch(const LstmBwdParams<T>& p, int blocks, int64_t smem) {
  launch_cooperative(lstm_bwd_persistent_kernel<T>, p, blocks, smem, "persistent LSTM backward");
}

template <typename T>
void launch(const GruFwdParams<T>& p, int blocks, int64_t smem) {
  launch_cooperative(gru_fwd_persistent_kernel<T>, p, blocks, smem, "persistent GRU forward");
}

template <typename T>
void launch(const GruBwdParams<T>& p, int blocks, int64_t smem) {
  launch_cooperative(gru_bwd_persistent_kernel<T>, p, blocks, smem, "persistent GRU backward");
}

template <typename T>
int blocks_per_sm(Kernel kernel, int64_t smem) {
  switch (kernel) {
    case Kernel::kLstmFwd: return blocks_per_sm_of(lstm_fwd_persistent_kernel<T>, smem);
    case Kernel::kLstmBwd: return blocks_per_sm_of(lstm_bwd_persistent_kernel<T>, smem);
    case Kernel::kGruFwd: return blocks_per_sm_of(gru_fwd_persistent_kernel<T>, smem);
    case Kernel::kGruBwd: return blocks_per_sm_of(gru_bwd_persistent_kernel<T>, smem);
  }
  return 0;
}

// Instantiates the launchers for the dtype T (once, in persistent_<dtype>.cu).
#define FUSEDRNN_INSTANTIATE_PERSISTENT(T)                                   \
  template void launch<T>(const LstmFwdParams<T>&, int, int64_t);           \
  template void launch<T>(const LstmBwdParams<T>&, int, int64_t);           \
  template void launch<T>(const GruFwdParams<T>&, int, int64_t);            \
  template void launch<T>(const GruBwdParams<T>&, int, int64_t);            \
  template int blocks_per_sm<T>(Kernel, int64_t);

}  // namespace persistent
}  // namespace fusedrnn
