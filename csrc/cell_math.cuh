// Device math shared by the forward and backward step kernels of every cell.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "elementwise_launch.cuh"

namespace fusedrnn {

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

// Step t of sequence b is active while t < lengths[b]; every step is when lengths is null.
__device__ __forceinline__ bool is_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// The lengths argument of a kernel: its data, or null when every step is active.
inline const int64_t* lengths_ptr(const at::Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

}  // namespace fusedrnn
