// The host emulation of what the persistent kernels use of CUDA's warp matrix functions
// (nvcuda::wmma, <mma.h>): fragments, their loads, products and stores, and the TF32
// rounding. Every thread of a warp holds the whole matrix of a fragment (x[], row by row;
// the kernels only touch x[] element by element) and computes the whole product; lane 0
// alone stores it, which the kernels read only after a __syncthreads(). Products of
// float16, bfloat16 or TF32 operands are exact in float32, and the sums run in float32, as
// on the tensor cores (in another order: the last bits may differ). Also __half and
// __nv_bfloat16, the element types the kernels name, as c10's. Compiled only with
// FUSEDRNN_HOST_EMULATION (elementwise_launch.cuh).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "elementwise_launch.cuh"

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = Shape<Use, M, N, K>::rows, cols = Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

// Element (r, c) of a fragment's matrix at `pointer` with leading dimension `ld`.
template <typename E, typename Layout>
float element(const E* pointer, int ld, int r, int c) {
  const int64_t at = std::is_same_v<Layout, row_major> ? int64_t{r} * ld + c
                                                       : int64_t{c} * ld + r;
  return static_cast<float>(pointer[at]);
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename E>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* pointer, unsigned ld) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) {
      f.x[r * F::cols + c] = element<E, Layout>(pointer, static_cast<int>(ld), r, c);
    }
  }
}

template <int M, int N, int K, typename T, typename La, typename Lb>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, T, La>& a,
              const fragment<matrix_b, M, N, K, T, Lb>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      float sum = c.x[m * N + n];
      for (int k = 0; k < K; ++k) sum += a.x[m * K + k] * b.x[k * N + n];
      d.x[m * N + n] = sum;
    }
  }
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float value) {
  for (float& element : f.x) element = value;
}

template <int M, int N, int K>
void store_matrix_sync(float* pointer, const fragment<accumulator, M, N, K, float>& f,
                       unsigned ld, layout_t layout) {
  if (fusedrnn::threadIdx.x % 32 != 0) return;
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      const int64_t at = layout == mem_row_major ? int64_t{m} * ld + n : int64_t{n} * ld + m;
      pointer[at] = f.x[m * N + n];
    }
  }
}

// float to TF32 (10 mantissa bits), rounded to nearest, ties away from zero, as
// cvt.rna.tf32.f32; the result is a float with the low 13 mantissa bits clear.
inline float __float_to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & ~0x1fffu;  // not inf, NaN
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace wmma
}  // namespace nvcuda
