// The row conversions of bf16_rows.h, vectorised per instruction set (their calls go through
// the clones' dispatch, so they gain nothing from inlining).
#include "bf16_rows.h"

#include "cpu_math.h"

namespace fusedrnn::cpu {

FUSEDRNN_SIMD_CLONES void widen_row(const uint16_t* __restrict__ in, float* __restrict__ out,
                                    int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = bf16_to_float(in[j]);
}

FUSEDRNN_SIMD_CLONES void narrow_row(const float* __restrict__ in, uint16_t* __restrict__ out,
                                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = float_to_bf16(in[j]);
}

}  // namespace fusedrnn::cpu
