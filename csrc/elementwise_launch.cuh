// How the step kernels (one thread per element: lstm_kernels.cuh, gru_kernels.cuh, ...) are
// compiled and launched, in either of two builds of the same source:
//  - by nvcc, in fusedrnn._C: CUDA's qualifiers; launch_elementwise launches the kernel on
//    the current stream and checks the launch;
//  - by the host C++ compiler, in fusedrnn._cuda_emulation (FUSEDRNN_HOST_EMULATION,
//    csrc/emulation/): the qualifiers are empty, threadIdx, blockIdx and blockDim are
//    variables of the calling thread, and launch_elementwise runs every thread of every block
//    in turn on it. That runs the kernels as the GPU would only because their threads neither
//    share memory nor synchronise, and each writes only its own elements: true of the step
//    kernels. The persistent kernels' threads do both: the emulation runs them on threads of
//    their own (csrc/emulation/block_threads.h).
#pragma once

#include <cstdint>

#ifdef FUSEDRNN_HOST_EMULATION
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __expf(x) expf(x)
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#endif

namespace fusedrnn {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

#ifdef FUSEDRNN_HOST_EMULATION
struct ThreadIndex {
  unsigned int x = 0, y = 0, z = 0;
};
inline thread_local ThreadIndex threadIdx, blockIdx, blockDim;
#endif

// Runs `kernel(args...)` with one thread per element of `elements` (kThreads per block); the
// kernel returns at once on the threads past the last element.
template <typename... Params, typename... Args>
void launch_elementwise(void (*kernel)(Params...), int64_t elements, Args... args) {
  if (elements == 0) return;
#ifdef FUSEDRNN_HOST_EMULATION
  blockDim.x = kThreads;
  for (blockIdx.x = 0; blockIdx.x < blocks_for(elements); ++blockIdx.x) {
    for (threadIdx.x = 0; threadIdx.x < kThreads; ++threadIdx.x) kernel(args...);
  }
#else
  kernel<<<blocks_for(elements), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

}  // namespace fusedrnn
