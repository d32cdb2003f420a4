// Device pieces shared by the persistent kernels: loading a block's weight slice into shared
// memory once, and the per-step product of that slice with 16 batch rows of the exchanged
// state on the tensor cores (WMMA), float32 accumulation. float16 and bfloat16 operands go
// to the tensor cores as they are; float32 operands as three TF32 products (hi*hi + hi*lo +
// lo*hi), which keeps float32 accuracy (a plain TF32 product would not).
#pragma once

#ifdef FUSEDRNN_HOST_EMULATION
#include "emulation/block_threads.h"
#include "emulation/wmma.h"
#else
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

#include "persistent/params.h"
#include "persistent/slice_layout.h"

// This block's dynamic shared memory, 128-byte aligned, as the bytes `name` (the host
// emulation's: csrc/emulation/block_threads.h).
#ifdef FUSEDRNN_HOST_EMULATION
#define FUSEDRNN_DYNAMIC_SHARED(name) unsigned char* name = emulation::dynamic_shared_memory()
#else
#define FUSEDRNN_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace fusedrnn {
namespace persistent {

namespace wmma = nvcuda::wmma;
#ifdef FUSEDRNN_HOST_EMULATION
using std::min;
#endif

// The WMMA element type and K step of each dtype the kernels take.
template <typename scalar_t> struct Mma;
template <> struct Mma<c10::Half> { using elem = __half; static constexpr int kK = 16; };
template <> struct Mma<c10::BFloat16> { using elem = __nv_bfloat16; static constexpr int kK = 16; };
template <> struct Mma<float> { using elem = float; static constexpr int kK = 8; };

using Accumulator = wmma::fragment<wmma::accumulator, kTile, kTile, 16, float>;
using AccumulatorTf32 = wmma::fragment<wmma::accumulator, kTile, kTile, 8, float>;

// acc += A (16 x kK, row-major, leading dim lda) @ B (kK x 16, column n at b + n * ldb).
template <typename scalar_t>
__device__ __forceinline__ void mma_step(Accumulator& acc, const scalar_t* a, int lda,
                                         const scalar_t* b, int ldb) {
  using E = typename Mma<scalar_t>::elem;
  wmma::fragment<wmma::matrix_a, kTile, kTile, 16, E, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, kTile, kTile, 16, E, wmma::col_major> fb;
  wmma::load_matrix_sync(fa, reinterpret_cast<const E*>(a), lda);
  wmma::load_matrix_sync(fb, reinterpret_cast<const E*>(b), ldb);
  wmma::mma_sync(acc, fa, fb, acc);
}

// hi: each element rounded to TF32; lo: what that leaves (in TF32); cross: hi again, for the
// products with the other operand's lo. A non-finite element has no rest and takes no part
// in those corrections: their inf - inf or 0 * inf would turn the inf that float32's product
// gives into NaN (hi * hi alone carries it, and a NaN).
template <typename Fragment>
__device__ __forceinline__ void split_tf32(Fragment& hi, Fragment& lo, Fragment& cross) {
  for (int i = 0; i < hi.num_elements; ++i) {
    const float v = hi.x[i];
    const float h = wmma::__float_to_tf32(v);
    const bool finite = v - v == 0.0f;  // false for inf and NaN
    hi.x[i] = h;
    lo.x[i] = finite ? wmma::__float_to_tf32(v - h) : 0.0f;
    cross.x[i] = finite ? h : 0.0f;
  }
}

__device__ __forceinline__ void mma_step_f32(AccumulatorTf32& acc, const float* a, int lda,
                                             const float* b, int ldb) {
  using P = wmma::precision::tf32;
  wmma::fragment<wmma::matrix_a, kTile, kTile, 8, P, wmma::row_major> a_hi, a_lo, a_cross;
  wmma::fragment<wmma::matrix_b, kTile, kTile, 8, P, wmma::col_major> b_hi, b_lo, b_cross;
  wmma::load_matrix_sync(a_hi, a, lda);
  wmma::load_matrix_sync(b_hi, b, ldb);
  split_tf32(a_hi, a_lo, a_cross);
  split_tf32(b_hi, b_lo, b_cross);
  wmma::mma_sync(acc, a_lo, b_cross, acc);
  wmma::mma_sync(acc, a_cross, b_lo, acc);
  wmma::mma_sync(acc, a_hi, b_hi, acc);
}

// One warp's share: the product of row tile `mt` of A over K steps [k_begin, k_end), stored
// to the 16 x 16 float tile `out` column-major (consecutive rows, which consecutive threads
// read in product(), in consecutive banks).
template <typename scalar_t>
__device__ void warp_product(const scalar_t* a, int lda, int mt, int k_begin, int k_end,
                             const scalar_t* b, int ldb, float* out) {
  constexpr int kK = Mma<scalar_t>::kK;
  const scalar_t* a_rows = a + static_cast<int64_t>(mt) * kTile * lda;
  if constexpr (std::is_same_v<scalar_t, float>) {
    AccumulatorTf32 acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = k_begin; k < k_end; ++k) mma_step_f32(acc, a_rows + k * kK, lda, b + k * kK, ldb);
    wmma::store_matrix_sync(out, acc, kTile, wmma::mem_col_major);
  } else {
    Accumulator acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = k_begin; k < k_end; ++k) mma_step(acc, a_rows + k * kK, lda, b + k * kK, ldb);
    wmma::store_matrix_sync(out, acc, kTile, wmma::mem_col_major);
  }
}

// The block's product A @ B for 16 batch columns: A the weight slice in shared memory, B
// column n at b + n * ldb (the exchange buffer in global memory, or the cluster design's
// gathered tile in shared memory, written by every block in the previous step). The
// partial tiles go to `scratch`; read them with `product()` after a __syncthreads().
template <typename scalar_t>
__device__ void slice_products(const SliceLayout& s, const scalar_t* a, const scalar_t* b,
                               int ldb, float* scratch) {
  const int k_steps = s.cols / Mma<scalar_t>::kK;
  const int tasks = s.m_tiles * s.groups;
  for (int task = threadIdx.x / 32; task < tasks; task += kWarps) {
    const int mt = task % s.m_tiles, group = task / s.m_tiles;
    warp_product(a, s.lda, mt, group * k_steps / s.groups, (group + 1) * k_steps / s.groups,
                 b, ldb, scratch + task * kTile * kTile);
  }
}

// Element (row, n) of the block's product: the sum of its column groups' partial tiles.
__device__ __forceinline__ float product(const SliceLayout& s, const float* scratch, int row,
                                         int n) {
  const int mt = row / kTile, offset = n * kTile + row % kTile;
  float sum = 0.0f;
  for (int group = 0; group < s.groups; ++group) {
    sum += scratch[(group * s.m_tiles + mt) * kTile * kTile + offset];
  }
  return sum;
}

// Fills A (s.rows_pad x s.lda) from global memory: element (r, c) of A is weight(r, c) for
// r < s.rows and valid columns, zero elsewhere (`weight` returns zero where it has none).
template <typename scalar_t, typename Weight>
__device__ void load_slice(const SliceLayout& s, scalar_t* a, Weight weight) {
  const int64_t total = static_cast<int64_t>(s.rows_pad) * s.lda;
  for (int64_t idx = threadIdx.x; idx < total; idx += kThreads) {
    const int r = static_cast<int>(idx / s.lda), c = static_cast<int>(idx % s.lda);
    a[idx] = (r < s.rows && c < s.cols) ? weight(r, c) : scalar_t(0.0f);
  }
}

// The work of this block (params.h, Groups): hidden units [u0, u0 + mine) of its slice and
// batch rows [b_begin, b_end) of its group. Blocks of one group are consecutive (a 1-D
// cluster is formed of consecutive blocks).
struct BlockPart {
  int u0, mine, b_begin, b_end;
};

__device__ __forceinline__ BlockPart block_part(const Groups& groups, int units, int hidden,
                                                int batch) {
  const int u0 = static_cast<int>(blockIdx.x) % groups.slices * units;
  const int b_begin = static_cast<int>(blockIdx.x) / groups.slices * groups.group_rows;
  return {u0, min(units, hidden - u0), b_begin, min(batch, b_begin + groups.group_rows)};
}

// Step t of row b is active while t < lengths[b]; every step is when lengths is null.
__device__ __forceinline__ bool active_at(const int64_t* lengths, int b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// The once-per-step barrier of a block's group (params.h, Groups): its thread-block cluster's
// or the whole cooperative grid's. Both order the global-memory writes before it (the
// exchanged state) before the reads after it.
__device__ __forceinline__ void step_sync(bool cluster) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FUSEDRNN_HOST_EMULATION)
  if (cluster) {
    cooperative_groups::this_cluster().sync();
    return;
  }
#endif
  cooperative_groups::this_grid().sync();
}

}  // namespace persistent
}  // namespace fusedrnn
