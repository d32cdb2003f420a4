// The float32 row dots of row_dots.h with AVX-512 intrinsics, for CPUs with AVX-512F where
// FUSEDRNN_CPU_MATH is auto (avx512_rows()): the same multiply-adds into the same lanes and
// the same pairwise lane sums, so the same bits as the portable code, but the last, short
// chunk of a row read with a masked load (the portable code copies it: 1.5-3x the time at
// rows of 100-300 elements) and each group of four rows' sums taken together
// (row_dots_avx512_body.h).
#include "row_dots.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>

// GCC 12's masked-load intrinsics start from a vector initialised from itself, which
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Every function up to pop_options is built for AVX-512F: no header in between.
#pragma GCC push_options
#pragma GCC target("avx512f")

namespace fusedrnn::cpu {
namespace row_dots_f32 {

struct Chunks {
  using Elem = float;
  using Mask = __mmask16;
  static constexpr int64_t kElements = 16;
  static Mask full() { return 0xffff; }
  static Mask first(int64_t n) { return static_cast<Mask>((1u << n) - 1); }

  // Each batch row's chunk loaded once, then each row's: kBatch + 4 loads for 4 * kBatch
  // multiply-adds.
  template <int kBatch>
  static inline __attribute__((always_inline)) void add(__m512 (&acc)[4][kBatch],
                                                        const float* const* rows, int64_t k,
                                                        const float* a, int64_t k0, Mask mask) {
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
};

#include "row_dots_avx512_body.h"

}  // namespace row_dots_f32
}  // namespace fusedrnn::cpu
#pragma GCC pop_options

namespace fusedrnn::cpu {

void row_dots_avx512(const float* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                     int64_t c1, const float* a, int64_t batch, float* out, int64_t ldo) {
  row_dots_f32::run(w, rows, block_stride, k, c0, c1, a, batch, out, ldo);
}

}  // namespace fusedrnn::cpu

#else

#include <c10/util/Exception.h>

namespace fusedrnn::cpu {

void row_dots_avx512(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                     int64_t, float*, int64_t) {
  TORCH_CHECK(false, "fusedrnn: row_dots_avx512 called on a build without AVX-512 code");
}

}  // namespace fusedrnn::cpu

#endif
