// The bfloat16 row dots of row_dots.h, for CPUs with AVX512-BF16: each 32-element chunk's
// pairs of products (vdpbf16ps) into 16 float32 lanes, lane l taking elements 2l and 2l + 1,
// then the float32 row dots' lane sums, four rows at a time (row_dots_avx512_body.h).
#include <c10/util/Exception.h>

#include "row_dots.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>

namespace fusedrnn::cpu {

bool row_dots_bf16_runs() {
  static const bool runs =
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return runs;
}

}  // namespace fusedrnn::cpu

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // as in row_dots_avx512.cpp
// Every function up to pop_options is built for AVX512-BF16: no header in between.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")

namespace fusedrnn::cpu {
namespace row_dots_bf16_detail {

struct Chunks {
  using Elem = uint16_t;
  using Mask = __mmask32;
  static constexpr int64_t kElements = 32;
  static Mask full() { return 0xffffffffu; }
  static Mask first(int64_t n) { return static_cast<Mask>((uint64_t{1} << n) - 1); }

  template <int kBatch>
  static inline __attribute__((always_inline)) void add(__m512 (&acc)[4][kBatch],
                                                        const uint16_t* const* rows, int64_t k,
                                                        const uint16_t* a, int64_t k0,
                                                        Mask mask) {
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
};

#include "row_dots_avx512_body.h"

}  // namespace row_dots_bf16_detail
}  // namespace fusedrnn::cpu
#pragma GCC pop_options

namespace fusedrnn::cpu {

void row_dots_bf16(const uint16_t* w, int64_t rows, int64_t block_stride, int64_t k, int64_t c0,
                   int64_t c1, const uint16_t* a, int64_t batch, float* out, int64_t ldo) {
  TORCH_CHECK(row_dots_bf16_runs(), "fusedrnn: bfloat16 row dots need AVX512-BF16");
  if (c1 <= c0) return;  // no columns (and maybe no rows per block to divide by)
  row_dots_bf16_detail::run(w, rows, block_stride, k, c0, c1, a, batch, out, ldo);
}

}  // namespace fusedrnn::cpu

#else

namespace fusedrnn::cpu {

bool row_dots_bf16_runs() { return false; }

void row_dots_bf16(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                   const uint16_t*, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "fusedrnn: bfloat16 row dots need AVX512-BF16");
}

}  // namespace fusedrnn::cpu

#endif
