// The forward's products of calls of a few rows (the input projection, the recurrent
// product, the LSTM projection's), out = a @ W^T, as dot products of W's rows, read where
// they are: nothing is copied, transposed or packed first, so nothing is prepared, kept from
// one call to the next or checksummed (prepared_cache.h). At a few rows the product is one
// pass over W whichever way it runs, and a call of one step (a cell, decoding step by step)
// paid for a pass more: checksumming the kept products' weight (blas.h's products read a
// transposed copy), or making that copy.
//
// Lanes: each dot product sums W's row and a's row in 64 bytes of lanes (16 floats, 8
// doubles), lane l taking the elements at k = l mod lanes (a short last chunk adds nothing to
// the lanes past its end), then the lanes pairwise: lane l plus lane l + lanes / 2, and so on
// down to one. Every clone (AVX-512, AVX2, baseline) sums in this order, and so does the
// float32 code with AVX-512 intrinsics (row_dots_avx512.cpp), which takes four rows' sums at
// once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "avx512_rows.h"
#include "cpu_math.h"

namespace fusedrnn::cpu {
namespace row_dots_detail {

// 64 bytes of scalar_t as one value (GCC's and Clang's vector extension): one AVX-512
// register, two AVX2 ones, four SSE ones, as the clone's target has them.
template <typename scalar_t, int kBytes>
struct VecOf;
template <int kBytes>
struct VecOf<float, kBytes> {
  typedef float type __attribute__((vector_size(kBytes)));
};
template <int kBytes>
struct VecOf<double, kBytes> {
  typedef double type __attribute__((vector_size(kBytes)));
};
template <typename scalar_t, int kBytes = 64>
using Vec = typename VecOf<scalar_t, kBytes>::type;

template <typename scalar_t, int kBytes>
FUSEDRNN_MATH Vec<scalar_t, kBytes> load(const scalar_t* p) {
  Vec<scalar_t, kBytes> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The lanes of v summed pairwise: lane l plus lane l + half, halving down to one lane.
template <typename scalar_t, int kBytes>
FUSEDRNN_MATH scalar_t lane_sum(Vec<scalar_t, kBytes> v) {
  if constexpr (kBytes == static_cast<int>(sizeof(scalar_t))) {
    return v[0];
  } else {
    Vec<scalar_t, kBytes / 2> low, high;
    std::memcpy(&low, &v, sizeof(low));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(low), sizeof(high));
    return lane_sum<scalar_t, kBytes / 2>(low + high);
  }
}

// out[b * ldo + c + j] for j < kRows, the dot products of a's batch rows b < kBatch (row
// stride k; their last, short chunks zero-padded in a_tail) with the rows at rows[j]: kRows
// x kBatch accumulators, whose chains of multiply-adds run side by side.
template <typename scalar_t, int kBatch, int kRows>
FUSEDRNN_MATH void dot_rows(const scalar_t* const* rows, int64_t k, const scalar_t* a,
                            const scalar_t (*a_tail)[64 / sizeof(scalar_t)], scalar_t* out,
                            int64_t ldo) {
  using V = Vec<scalar_t>;
  constexpr int64_t kLanes = 64 / sizeof(scalar_t);
  const int64_t full = k / kLanes * kLanes;
  V acc[kRows][kBatch] = {};
  for (int64_t k0 = 0; k0 < full; k0 += kLanes) {
    V av[kBatch];  // each batch row's chunk loaded once, for every row of w
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) av[b] = load<scalar_t, 64>(a + b * k + k0);
#pragma GCC unroll 4
    for (int j = 0; j < kRows; ++j) {
      const V wv = load<scalar_t, 64>(rows[j] + k0);
#pragma GCC unroll 4
      for (int b = 0; b < kBatch; ++b) acc[j][b] += wv * av[b];
    }
  }
  if (full < k) {
#pragma GCC unroll 4
    for (int j = 0; j < kRows; ++j) {
      scalar_t w_tail[kLanes] = {};
      std::copy(rows[j] + full, rows[j] + k, w_tail);
      const V wv = load<scalar_t, 64>(w_tail);
#pragma GCC unroll 4
      for (int b = 0; b < kBatch; ++b) acc[j][b] += wv * load<scalar_t, 64>(a_tail[b]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < kRows; ++j) {
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) out[b * ldo + j] = lane_sum<scalar_t, 64>(acc[j][b]);
  }
}

// out[b * ldo + c] for the batch rows b < kBatch of a (row stride k) and the columns c in
// [c0, c1): column c is W's row (c / rows) * block_stride + (c % rows) * k. Four rows at a
// time.
template <typename scalar_t, int kBatch>
FUSEDRNN_SIMD_CLONES void row_dots_batch(const scalar_t* __restrict__ w, int64_t rows,
                                         int64_t block_stride, int64_t k, int64_t c0,
                                         int64_t c1, const scalar_t* __restrict__ a,
                                         scalar_t* __restrict__ out, int64_t ldo) {
  constexpr int64_t kLanes = 64 / sizeof(scalar_t);
  constexpr int kRows = 4;
  const int64_t full = k / kLanes * kLanes;
  scalar_t a_tail[kBatch][kLanes] = {};
  for (int b = 0; b < kBatch; ++b) std::copy(a + b * k + full, a + (b + 1) * k, a_tail[b]);
  int64_t block = c0 / rows, row = c0 % rows;  // of column c
  const scalar_t* group[kRows];
  int64_t c = c0;
  while (c < c1) {
    const int64_t first = c;
    int count = 0;
    for (; count < kRows && c < c1; ++count, ++c) {
      group[count] = w + block * block_stride + row * k;
      if (++row == rows) row = 0, ++block;
    }
    if (count == kRows) {
      dot_rows<scalar_t, kBatch, kRows>(group, k, a, a_tail, out + first, ldo);
    } else {
      for (int j = 0; j < count; ++j) {
        dot_rows<scalar_t, kBatch, 1>(group + j, k, a, a_tail, out + first + j, ldo);
      }
    }
  }
}

}  // namespace row_dots_detail

// The calls whose forward products run as row dots (FUSEDRNN_CPU_GEMM=auto): up to this
// many rows over all steps, or one batch row per step at any length from rows of
// kRowDotsOneRowFrom elements. A step's product on brgemm on the kept copy (blas.h) takes
// less time from two rows on, and below 128 elements a row: on the 2-core AMD EPYC, LSTM
// forward op, us per step, row dots against brgemm: 0.4 against 0.3 at batch 1, hidden 32;
// 2.8 against 3.0 at 1 x 128, 5.8 against 6.0 at 1 x 256, 27 against 42 at 1 x 512; 8.7
// against 6.8 at 2 x 256, 14.3 against 11.9 at 4 x 256, 48 against 44.5 at 4 x 512. A
// one-step call took 19 against 39 us at 1 x 256, 22 against 40 at 2 x 256, 28 against 43
// at 4 x 256 and 65 against 132 at 4 x 512: the checksum of the kept copy's W_hh (19 us at
// hidden 256, 74 at 512) is gone.
constexpr int64_t kRowDotsRowsUpTo = 16;
constexpr int64_t kRowDotsOneRowFrom = 128;

// row_dots<float> with AVX-512 intrinsics (row_dots_avx512.cpp), the same sums: where
// avx512_rows().
void row_dots_avx512(const float* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                     int64_t c1, const float* a, int64_t batch, float* out, int64_t ldo);

// Whether the CPU runs the bfloat16 row dots (AVX512-BF16 and AVX512BW), and those: out
// float32 (as row_dots) = a @ W^T for bfloat16 a and W, each 32-element chunk's pairs of
// products into 16 float32 lanes (vdpbf16ps), then the lane sums as above.
bool row_dots_bf16_runs();
void row_dots_bf16(const uint16_t* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                   int64_t c1, const uint16_t* a, int64_t batch, float* out, int64_t ldo);

// The same for the bfloat16 row dots, whose steps at one row took longer than brgemm's
// while W_hh fit in a core's cache: LSTM module, 100 steps at batch 1, row dots against
// brgemm, 0.97 at hidden 128, 1.06 at 200 (GRU 1.02 at 256), 0.70 at 512
// (benchmarks/results/epyc-2core-row-dots-ab).
constexpr int64_t kRowDotsBf16OneRowFrom = 512;

// Whether a call's forward products, `batch` rows in each of `steps` steps reducing over k,
// run as row dots (FUSEDRNN_CPU_GEMM=auto; see kRowDotsRowsUpTo), where the dtype has them:
// one row per step from rows of `one_row_from` elements.
inline bool row_dots_pay(int64_t batch, int64_t steps, int64_t k,
                         int64_t one_row_from = kRowDotsOneRowFrom) {
  return batch * steps <= kRowDotsRowsUpTo || (batch == 1 && k >= one_row_from);
}

// out (batch, columns c0 to c1 of its row stride ldo) = a (batch, k) @ W^T for those columns:
// W's rows in blocks of `rows` rows, block j's first row at w + j * block_stride (row
// stride k), column c the dot product with row c % rows of block c / rows.
template <typename scalar_t>
void row_dots(const scalar_t* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
              int64_t c1, const scalar_t* a, int64_t batch, scalar_t* out, int64_t ldo) {
  using row_dots_detail::row_dots_batch;
  if (c1 <= c0) return;  // no columns (and maybe no rows per block to divide by)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (avx512_rows()) {
      row_dots_avx512(w, rows, block_stride, k, c0, c1, a, batch, out, ldo);
      return;
    }
  }
  for (int64_t b = 0; b < batch; b += 4) {
    const scalar_t* ab = a + b * k;
    scalar_t* ob = out + b * ldo;
    switch (std::min<int64_t>(4, batch - b)) {
      case 1: row_dots_batch<scalar_t, 1>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 2: row_dots_batch<scalar_t, 2>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 3: row_dots_batch<scalar_t, 3>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      default: row_dots_batch<scalar_t, 4>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    }
  }
}

}  // namespace fusedrnn::cpu
