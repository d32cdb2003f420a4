// The row dots of row_dots.h with AVX-512 intrinsics: float32 (row_dots_avx512) and
// bfloat16 (row_dots_bf16, AVX512-BF16's vdpbf16ps, float32 sums).
//
// The float32 row dots of row_dots.h with AVX-512 intrinsics, for CPUs with AVX-512F where
// FUSEDRNN_CPU_MATH is auto (avx512_rows()): the same multiply-adds into the same lanes and
// the same pairwise lane sums, so the same bits as the portable code, but each group of four
// rows' sums taken together, by shuffles across their four accumulators (17 instructions
// for four sums where the portable code spends about nine on each). At a row of 128 or 256
// elements the sums were a third of the work.
#include "row_dots.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <c10/util/Exception.h>
#include <immintrin.h>

#include <algorithm>

// GCC 12's masked-load intrinsics start from a vector initialised from itself, which
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define FUSEDRNN_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define FUSEDRNN_AVX512_ENTRY __attribute__((target("avx512f")))

namespace fusedrnn::cpu {
namespace {

// out[0..3] = the lane sums of v0..v3 (row_dots.h's order: lane l plus lane l + 8, then
// l + 4, l + 2, l + 1).
FUSEDRNN_AVX512 void store_lane_sums(__m512 v0, __m512 v1, __m512 v2, __m512 v3, float* out) {
  // Blocks of 4 lanes: [v0 0-3 + 8-11, v0 4-7 + 12-15, v1 ..., v1 ...], and so for v2, v3.
  const __m512 p01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 p23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 2, 3, 2)));
  // Block j: row j's lanes l + l + 4 (l < 4).
  const __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(p01, p23, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(p01, p23, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 r = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(1, 0, 3, 2)));
  const __m512 s = _mm512_add_ps(r, _mm512_permute_ps(r, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, s)));
}

// acc[j][b] += the chunk at k0 of the rows at rows[j] times a's batch row b's, lanes past
// `mask` zero: each batch row's chunk loaded once, then each row's, kBatch + 4 loads for
// 4 * kBatch multiply-adds.
template <int kBatch>
FUSEDRNN_AVX512 void add_chunk(__m512 (&acc)[4][kBatch], const float* const* rows, int64_t k,
                               const float* a, int64_t k0, __mmask16 mask) {
  __m512 av[kBatch];
#pragma GCC unroll 4
  for (int b = 0; b < kBatch; ++b) av[b] = _mm512_maskz_loadu_ps(mask, a + b * k + k0);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 w = _mm512_maskz_loadu_ps(mask, rows[j] + k0);
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) acc[j][b] = _mm512_fmadd_ps(w, av[b], acc[j][b]);
  }
}

// out[b * ldo + j] for j < count (at most 4) and b < kBatch: the dot products of the rows
// at rows[0..3] (the last ones repeated where count < 4) with a's batch rows.
template <int kBatch>
FUSEDRNN_AVX512 void dot_four_rows(const float* const* rows, int count, int64_t k,
                                   const float* a, float* out, int64_t ldo) {
  __m512 acc[4][kBatch];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) acc[j][b] = _mm512_setzero_ps();
  }
  int64_t k0 = 0;
  for (; k0 + 16 <= k; k0 += 16) add_chunk<kBatch>(acc, rows, k, a, k0, 0xffff);
  // The short last chunk, zeros past k (as the portable code's padding).
  if (k0 < k) add_chunk<kBatch>(acc, rows, k, a, k0, static_cast<__mmask16>((1u << (k - k0)) - 1));
#pragma GCC unroll 4
  for (int b = 0; b < kBatch; ++b) {
    float sums[4];
    store_lane_sums(acc[0][b], acc[1][b], acc[2][b], acc[3][b], sums);
    std::copy(sums, sums + count, out + b * ldo);
  }
}

template <int kBatch>
FUSEDRNN_AVX512_ENTRY void row_dots_batch_avx512(const float* w, int64_t rows,
                                                 int64_t block_stride, int64_t k, int64_t c0,
                                                 int64_t c1, const float* a, float* out,
                                                 int64_t ldo) {
  int64_t block = c0 / rows, row = c0 % rows;  // of column c
  for (int64_t c = c0; c < c1;) {
    const float* group[4];
    int count = 0;
    for (; count < 4 && c < c1; ++count, ++c) {
      group[count] = w + block * block_stride + row * k;
      if (++row == rows) row = 0, ++block;
    }
    for (int j = count; j < 4; ++j) group[j] = group[count - 1];
    dot_four_rows<kBatch>(group, count, k, a, out + (c - count), ldo);
  }
}

}  // namespace

void row_dots_avx512(const float* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                     int64_t c1, const float* a, int64_t batch, float* out, int64_t ldo) {
  for (int64_t b = 0; b < batch; b += 4) {
    const float* ab = a + b * k;
    float* ob = out + b * ldo;
    switch (std::min<int64_t>(4, batch - b)) {
      case 1: row_dots_batch_avx512<1>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 2: row_dots_batch_avx512<2>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 3: row_dots_batch_avx512<3>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      default: row_dots_batch_avx512<4>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    }
  }
}

namespace {

#define FUSEDRNN_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline
#define FUSEDRNN_AVX512_BF16_ENTRY __attribute__((target("avx512f,avx512bw,avx512bf16")))

// The bfloat16 row dots: acc[j][b] lane l += the products of elements 2l and 2l + 1 of each
// 32-element chunk (vdpbf16ps), lanes past `mask`'s elements zero; then the float32 lane
// sums.
template <int kBatch>
FUSEDRNN_AVX512_BF16 void add_chunk_bf16(__m512 (&acc)[4][kBatch], const uint16_t* const* rows,
                                         int64_t k, const uint16_t* a, int64_t k0,
                                         __mmask32 mask) {
  __m512bh av[kBatch];
#pragma GCC unroll 4
  for (int b = 0; b < kBatch; ++b) {
    av[b] = (__m512bh)_mm512_maskz_loadu_epi16(mask, a + b * k + k0);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512bh w = (__m512bh)_mm512_maskz_loadu_epi16(mask, rows[j] + k0);
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) acc[j][b] = _mm512_dpbf16_ps(acc[j][b], w, av[b]);
  }
}

template <int kBatch>
FUSEDRNN_AVX512_BF16 void dot_four_rows_bf16(const uint16_t* const* rows, int count, int64_t k,
                                             const uint16_t* a, float* out, int64_t ldo) {
  __m512 acc[4][kBatch];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) acc[j][b] = _mm512_setzero_ps();
  }
  int64_t k0 = 0;
  for (; k0 + 32 <= k; k0 += 32) add_chunk_bf16<kBatch>(acc, rows, k, a, k0, 0xffffffffu);
  if (k0 < k) {
    add_chunk_bf16<kBatch>(acc, rows, k, a, k0, static_cast<__mmask32>((1ull << (k - k0)) - 1));
  }
#pragma GCC unroll 4
  for (int b = 0; b < kBatch; ++b) {
    float sums[4];
    store_lane_sums(acc[0][b], acc[1][b], acc[2][b], acc[3][b], sums);
    std::copy(sums, sums + count, out + b * ldo);
  }
}

template <int kBatch>
FUSEDRNN_AVX512_BF16_ENTRY void row_dots_batch_bf16(const uint16_t* w, int64_t rows,
                                                    int64_t block_stride, int64_t k, int64_t c0,
                                                    int64_t c1, const uint16_t* a, float* out,
                                                    int64_t ldo) {
  int64_t block = c0 / rows, row = c0 % rows;  // of column c
  for (int64_t c = c0; c < c1;) {
    const uint16_t* group[4];
    int count = 0;
    for (; count < 4 && c < c1; ++count, ++c) {
      group[count] = w + block * block_stride + row * k;
      if (++row == rows) row = 0, ++block;
    }
    for (int j = count; j < 4; ++j) group[j] = group[count - 1];
    dot_four_rows_bf16<kBatch>(group, count, k, a, out + (c - count), ldo);
  }
}

}  // namespace

bool row_dots_bf16_runs() {
  static const bool runs = __builtin_cpu_supports("avx512bf16") &&
                           __builtin_cpu_supports("avx512bw");
  return runs;
}

void row_dots_bf16(const uint16_t* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                   int64_t c1, const uint16_t* a, int64_t batch, float* out, int64_t ldo) {
  TORCH_CHECK(row_dots_bf16_runs(), "fusedrnn: bfloat16 row dots need AVX512-BF16");
  for (int64_t b = 0; b < batch; b += 4) {
    const uint16_t* ab = a + b * k;
    float* ob = out + b * ldo;
    switch (std::min<int64_t>(4, batch - b)) {
      case 1: row_dots_batch_bf16<1>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 2: row_dots_batch_bf16<2>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      case 3: row_dots_batch_bf16<3>(w, rows, block_stride, k, c0, c1, ab, ob, ldo); break;
      default: row_dots_batch_bf16<4>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    }
  }
}

}  // namespace fusedrnn::cpu

#else

#include <c10/util/Exception.h>

namespace fusedrnn::cpu {

void row_dots_avx512(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                     int64_t, float*, int64_t) {
  TORCH_CHECK(false, "fusedrnn: row_dots_avx512 called on a build without AVX-512 code");
}

bool row_dots_bf16_runs() { return false; }

void row_dots_bf16(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                   const uint16_t*, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "fusedrnn: bfloat16 row dots need AVX512-BF16");
}

}  // namespace fusedrnn::cpu

#endif
