// The body of the AVX-512 row dots (row_dots.h), compiled once per element type: included,
// inside a namespace of its own, by row_dots_avx512.cpp (float32) and row_dots_bf16.cpp
// (bfloat16), each after `#pragma GCC target` for its instruction set and after every other
// header (so that nothing else is built for that target). The includer defines `Chunks`:
//   Elem, kElements (the elements of one 64-byte chunk), Mask, full(), first(n) (a mask of
//   the first n elements), and add<kBatch>(acc, rows, k, a, k0, mask): acc[j][b] lane l +=
//   the products of chunk k0 of rows[j] and of a's batch row b that go to lane l (elements
//   past mask: zero).
// No include guard: each includer's namespace gets its own copy. It includes nothing.

// out[0..3] = the lane sums of v0..v3 (row_dots.h's order: lane l plus lane l + 8, then
// l + 4, l + 2, l + 1), four rows' sums at once by shuffles across their accumulators.
inline __attribute__((always_inline)) void store_lane_sums(__m512 v0, __m512 v1, __m512 v2,
                                                           __m512 v3, float* out) {
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

// out[b * ldo + j] for j < count (at most 4) and b < kBatch: the dot products of the rows
// at rows[0..3] (the last ones repeated where count < 4) with a's batch rows.
template <int kBatch>
inline __attribute__((always_inline)) void dot_four_rows(const typename Chunks::Elem* const* rows,
                                                         int count, int64_t k,
                                                         const typename Chunks::Elem* a,
                                                         float* out, int64_t ldo) {
  __m512 acc[4][kBatch];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 4
    for (int b = 0; b < kBatch; ++b) acc[j][b] = _mm512_setzero_ps();
  }
  int64_t k0 = 0;
  for (; k0 + Chunks::kElements <= k; k0 += Chunks::kElements) {
    Chunks::template add<kBatch>(acc, rows, k, a, k0, Chunks::full());
  }
  // The short last chunk, zeros past k (as the portable code's padding).
  if (k0 < k) Chunks::template add<kBatch>(acc, rows, k, a, k0, Chunks::first(k - k0));
#pragma GCC unroll 4
  for (int b = 0; b < kBatch; ++b) {
    float sums[4];
    store_lane_sums(acc[0][b], acc[1][b], acc[2][b], acc[3][b], sums);
    for (int j = 0; j < count; ++j) out[b * ldo + j] = sums[j];
  }
}

// Columns [c0, c1) for a's batch rows b < kBatch, four rows of W at a time.
template <int kBatch>
void row_dots_batch(const typename Chunks::Elem* w, int64_t rows, int64_t block_stride,
                    int64_t k, int64_t c0, int64_t c1, const typename Chunks::Elem* a,
                    float* out, int64_t ldo) {
  int64_t block = c0 / rows, row = c0 % rows;  // of column c
  for (int64_t c = c0; c < c1;) {
    const typename Chunks::Elem* group[4];
    int count = 0;
    for (; count < 4 && c < c1; ++count, ++c) {
      group[count] = w + block * block_stride + row * k;
      if (++row == rows) row = 0, ++block;
    }
    for (int j = count; j < 4; ++j) group[j] = group[count - 1];
    dot_four_rows<kBatch>(group, count, k, a, out + (c - count), ldo);
  }
}

// row_dots' contract (row_dots.h) for this element type.
void run(const typename Chunks::Elem* w, int64_t rows, int64_t block_stride, int64_t k,
         int64_t c0, int64_t c1, const typename Chunks::Elem* a, int64_t batch, float* out,
         int64_t ldo) {
  for (int64_t b = 0; b < batch; b += 4) {
    const typename Chunks::Elem* ab = a + b * k;
    float* ob = out + b * ldo;
    const int64_t left = batch - b;
    if (left == 1) {
      row_dots_batch<1>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    } else if (left == 2) {
      row_dots_batch<2>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    } else if (left == 3) {
      row_dots_batch<3>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    } else {
      row_dots_batch<4>(w, rows, block_stride, k, c0, c1, ab, ob, ldo);
    }
  }
}
