// Microbenchmark of the barriers a persistent kernel can meet at once per step: the grid-wide
// barrier of a cooperative launch (what csrc/persistent/*_persistent.cuh use) and, on Hopper
// (sm_90), the barrier of a thread-block cluster. benchmarks/barrier_latency.py runs it
// through fusedrnn._C.barrier_latency_us; its figures are the sync term of the per-step floor.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cooperative_groups.h>

#include <string>

#include "persistent/cluster_exchange.cuh"
#include "persistent/slice_layout.h"

namespace fusedrnn {
namespace persistent {
namespace {

__global__ void __launch_bounds__(kThreads, 1) grid_barrier_kernel(int iterations) {
  for (int i = 0; i < iterations; ++i) cooperative_groups::this_grid().sync();
}

__global__ void __launch_bounds__(kThreads, 1) cluster_barrier_kernel(int iterations) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (int i = 0; i < iterations; ++i) cooperative_groups::this_cluster().sync();
#endif
}

// Milliseconds of one launch of `iterations` barriers, between two events on the stream.
float time_launch(const std::string& kind, int blocks, int cluster, int iterations) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  C10_CUDA_CHECK(cudaEventRecord(start, stream));
  if (kind == "grid") {
    void* args[] = {&iterations};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(grid_barrier_kernel),
                                               dim3(blocks), dim3(kThreads), args, 0, stream));
  } else {
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = cluster_config(blocks, cluster, 0, stream, &attribute);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, cluster_barrier_kernel, iterations));
  }
  C10_CUDA_CHECK(cudaEventRecord(stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  return ms;
}

}  // namespace

// Microseconds per barrier: (a launch of `iterations` barriers - a launch of none) /
// iterations, the best of `repeats`. kind "grid": `blocks` blocks of 256 threads, one
// cooperative grid; "cluster": `blocks` blocks in clusters of `cluster` (needs sm_90).
double barrier_latency_us(const std::string& kind, int blocks, int cluster, int iterations,
                          int repeats) {
  TORCH_CHECK(kind == "grid" || kind == "cluster", "barrier kind must be grid or cluster, got ",
              kind);
  TORCH_CHECK(blocks > 0 && iterations > 0 && repeats > 0,
              "blocks, iterations and repeats must be positive");
  if (kind == "cluster") {
    int device = 0, major = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    TORCH_CHECK(major >= 9, "cluster barriers need compute capability 9.0 or newer");
    cudaFuncAttributes attributes;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, cluster_barrier_kernel));
    TORCH_CHECK(attributes.ptxVersion >= 90, "the extension was built without sm_90 code "
                "(FUSEDRNN_CUDA_ARCHS), so its cluster barrier kernel is empty");
    TORCH_CHECK(cluster > 0 && blocks % cluster == 0, "blocks (", blocks,
                ") must be a multiple of the cluster size (", cluster, ")");
    if (cluster > 8) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(cluster_barrier_kernel,
                                          cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    }
  }
  time_launch(kind, blocks, cluster, iterations);  // warm-up: module load, first launch
  float best = -1.0f;
  for (int r = 0; r < repeats; ++r) {
    const float with = time_launch(kind, blocks, cluster, iterations);
    const float without = time_launch(kind, blocks, cluster, 0);
    const float per = (with - without) / iterations;
    if (best < 0.0f || per < best) best = per;
  }
  return best * 1000.0;
}

}  // namespace persistent
}  // namespace fusedrnn
