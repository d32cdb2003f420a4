// Small row helpers shared by the CPU time loops of every cell.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "cpu_math.h"

namespace fusedrnn::cpu {

// Step t of row b is active while t < lengths[b]; every step is when lengths is null.
inline bool is_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

inline const int64_t* lengths_ptr(const at::Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

// acc (n) += x (n).
template <typename scalar_t>
FUSEDRNN_SIMD_CLONES void add_row(scalar_t* __restrict__ acc, const scalar_t* __restrict__ x,
                                  int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
}

// A bias argument, or zeros of `size` elements like `like` when it is absent, so that the
// step passes always read one (a branch on its presence stops their vectorisation).
inline at::Tensor bias_or_zeros(const std::optional<at::Tensor>& bias, int64_t size,
                                const at::Tensor& like) {
  return (bias.has_value() && bias->defined()) ? *bias : at::zeros({size}, like.options());
}

// fn(begin, end) over the rows [0, batch) of a step, each row `width` elements of work,
// split across torch's threads once a step has enough work to pay for waking them.
template <typename Fn>
void for_rows(int64_t batch, int64_t width, const Fn& fn) {
  constexpr int64_t kWorkPerThread = 16384;
  const int64_t grain = std::max<int64_t>(1, kWorkPerThread / std::max<int64_t>(width, 1));
  at::parallel_for(0, batch, grain, fn);
}

// An inactive row keeps its state: state (n) = previous (n); output (n), when given, = 0.
template <typename scalar_t>
void hold_row(scalar_t* state, const scalar_t* previous, scalar_t* output, int64_t n) {
  std::copy(previous, previous + n, state);
  if (output != nullptr) std::fill(output, output + n, scalar_t(0));
}

}  // namespace fusedrnn::cpu
