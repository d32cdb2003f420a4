// The typed launchers of params.h: one launch per call, cooperative (grid barrier) or in
// thread-block clusters (cluster barrier), after checking that the barrier can work (a
// cooperative grid that cannot be resident at once would fail to launch; a barrier across
// blocks that are not all resident would never return).
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <tuple>

#include "persistent/gru_persistent.cuh"
#include "persistent/lstm_persistent.cuh"

namespace fusedrnn {
namespace persistent {

// The answers of the occupancy queries below, per (device, kernel, shared memory, cluster
// size; 0 for a cooperative grid), asked once per process: each query is several driver
// calls and a function attribute write, and no answer changes within a process (the
// attributes a query raises stay raised). One table for every kernel and translation unit.
struct OccupancyAnswers {
  std::mutex mutex;
  std::map<std::tuple<int, const void*, int64_t, int>, int> answers;
};

inline OccupancyAnswers& occupancy_answers() {
  static OccupancyAnswers table;
  return table;
}

template <typename Ask>
int cached_occupancy(const void* kernel, int64_t smem, int cluster, Ask ask) {
  OccupancyAnswers& table = occupancy_answers();
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, kernel, smem, cluster);
  {
    std::lock_guard<std::mutex> lock(table.mutex);
    const auto found = table.answers.find(key);
    if (found != table.answers.end()) return found->second;
  }
  const int answer = ask();  // unlocked: two threads may both ask; their answers agree
  std::lock_guard<std::mutex> lock(table.mutex);
  table.answers.emplace(key, answer);
  return answer;
}

// -1 when the kernel holds no code for compute capability 8.0+ (a build for older
// architectures only, whose kernels are __trap() stubs), else the occupancy.
template <typename KernelFn>
int ask_blocks_per_sm(KernelFn kernel, int64_t smem) {
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.ptxVersion < 80) return -1;
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // Dynamic shared memory may take what the kernel's static shared memory leaves of the
  // device's per-block limit (a larger attribute is an invalid value).
  const int dynamic_limit = limit - static_cast<int>(attributes.sharedSizeBytes);
  if (smem > dynamic_limit) return 0;
  // The kernel's limit is raised to all of that, not to this call's size: the attribute
  // belongs to the kernel, so a call's own size set here could be lowered by another host
  // thread's smaller call between this and the launch, which would then fail.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      dynamic_limit));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                               static_cast<size_t>(smem)));
  return per_sm;
}

template <typename KernelFn>
int blocks_per_sm_of(KernelFn kernel, int64_t smem) {
  return cached_occupancy(reinterpret_cast<const void*>(kernel), smem, 0,
                          [&] { return ask_blocks_per_sm(kernel, smem); });
}

// -1 when the kernel holds no sm_90 code, else how many clusters of `cluster` blocks with
// `smem` bytes each the current device holds at once (0 for a size it cannot place).
template <typename KernelFn>
int ask_max_clusters(KernelFn kernel, int64_t smem, int cluster) {
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.ptxVersion < 90) return -1;
  if (blocks_per_sm_of(kernel, smem) <= 0) return 0;  // also raises the shared-memory limit
  if (cluster > 8) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  }
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = cluster_config(cluster, cluster, smem, nullptr, &attribute);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, reinterpret_cast<const void*>(kernel), &config) !=
      cudaSuccess) {
    (void)cudaGetLastError();  // a cluster size the device cannot place: clear the error
    return 0;
  }
  return clusters;
}

template <typename KernelFn>
int max_clusters_of(KernelFn kernel, int64_t smem, int cluster) {
  return cached_occupancy(reinterpret_cast<const void*>(kernel), smem, cluster,
                          [&] { return ask_max_clusters(kernel, smem, cluster); });
}

// One launch of a persistent kernel: cooperative (one group, grid barrier) or in clusters of
// `slices` blocks (cluster barrier), after checking that the barrier can work.
template <typename KernelFn, typename Params>
void launch_persistent(KernelFn kernel, const Params& params, int blocks, int64_t smem,
                       const char* name) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (params.groups.cluster) {
    const int clusters = max_clusters_of(kernel, smem, params.groups.slices);
    TORCH_CHECK(clusters >= 1, "fusedrnn cuda backend: the ", name, " kernel cannot run in "
                "clusters of ", params.groups.slices, " blocks of ", smem, " bytes of shared "
                "memory on this GPU", clusters < 0 ? " (the extension holds no sm_90 code)" : "");
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config =
        cluster_config(blocks, params.groups.slices, smem, stream, &attribute);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params));
    return;
  }
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
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
                                             stream));
}

template <typename T>
void launch(const LstmFwdParams<T>& p, int blocks, int64_t smem) {
  launch_persistent(lstm_fwd_persistent_kernel<T>, p, blocks, smem, "persistent LSTM forward");
}

template <typename T>
void launch(const LstmBwdParams<T>& p, int blocks, int64_t smem) {
  launch_persistent(lstm_bwd_persistent_kernel<T>, p, blocks, smem, "persistent LSTM backward");
}

template <typename T>
void launch(const GruFwdParams<T>& p, int blocks, int64_t smem) {
  launch_persistent(gru_fwd_persistent_kernel<T>, p, blocks, smem, "persistent GRU forward");
}

template <typename T>
void launch(const GruBwdParams<T>& p, int blocks, int64_t smem) {
  launch_persistent(gru_bwd_persistent_kernel<T>, p, blocks, smem, "persistent GRU backward");
}

// fn(kernel) for the kernel function `kernel` names, instantiated for T.
template <typename T, typename Fn>
int with_kernel(Kernel kernel, Fn fn) {
  switch (kernel) {
    case Kernel::kLstmFwd: return fn(lstm_fwd_persistent_kernel<T>);
    case Kernel::kLstmBwd: return fn(lstm_bwd_persistent_kernel<T>);
    case Kernel::kGruFwd: return fn(gru_fwd_persistent_kernel<T>);
    case Kernel::kGruBwd: return fn(gru_bwd_persistent_kernel<T>);
  }
  return 0;
}

template <typename T>
int blocks_per_sm(Kernel kernel, int64_t smem) {
  return with_kernel<T>(kernel, [&](auto fn) { return blocks_per_sm_of(fn, smem); });
}

template <typename T>
int max_clusters(Kernel kernel, int64_t smem, int cluster) {
  return with_kernel<T>(kernel, [&](auto fn) { return max_clusters_of(fn, smem, cluster); });
}

// Instantiates the launchers for the dtype T (once, in persistent_<dtype>.cu).
#define FUSEDRNN_INSTANTIATE_PERSISTENT(T)                                   \
  template void launch<T>(const LstmFwdParams<T>&, int, int64_t);           \
  template void launch<T>(const LstmBwdParams<T>&, int, int64_t);           \
  template void launch<T>(const GruFwdParams<T>&, int, int64_t);            \
  template void launch<T>(const GruBwdParams<T>&, int, int64_t);            \
  template int blocks_per_sm<T>(Kernel, int64_t);                           \
  template int max_clusters<T>(Kernel, int64_t, int);

}  // namespace persistent
}  // namespace fusedrnn
