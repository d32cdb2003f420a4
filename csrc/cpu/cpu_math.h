// Scalar math of the CPU kernels, written so that the compiler vectorises the loops over
// hidden units that call it: no calls into libm for float, branch-free selects only.
//
// float: exp by Cody-Waite range reduction and a degree-5 polynomial (Cephes' expf, about
// 1 ulp; the argument is reduced to |r| <= ln2 / 2); sigmoid and tanh from it, dividing by
// Newton reciprocals; tanh by an odd polynomial below |x| = 0.625, where 1 - 2/(e^2x + 1)
// would cancel. double keeps libm: it is the precision the oracle comparisons use.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fusedrnn::cpu {

// One clone of a hot loop per instruction set, chosen when the library loads (GCC/Clang on
// x86-64 Linux); elsewhere the loop is built once for the compiler's default target.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define FUSEDRNN_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FUSEDRNN_SIMD_CLONES
#endif

// The scalar helpers must inline into the loops that call them, or those loops stop
// vectorising (GCC kept tanh out of line once it grew, and the LSTM step ran 4x slower).
#if defined(__GNUC__) || defined(__clang__)
#define FUSEDRNN_MATH inline __attribute__((always_inline))
#else
#define FUSEDRNN_MATH inline
#endif

FUSEDRNN_MATH float exp_fast(float x) {
  x = x < -86.0f ? -86.0f : x;  // e^-86: still a normal float; NaN passes both selects
  x = x > 88.3f ? 88.3f : x;
  // n = x / ln 2 rounded to the nearest integer: adding and removing 1.5 * 2^23 leaves no
  // fraction bits (a floor would be a libm call, which stops vectorisation).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = x * x;
  float p = 1.9875691500e-4f;
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * z + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// 1 / x for 1 <= x <= e^60 (the denominators below; near the top of the float range the
// estimate fails): an estimate from the exponent bits, then three Newton steps, each
// squaring the relative error (at most 5% first). The last step adds the residual,
// y + y (1 - x y), where 1 - x y is exact: 8.9e-8 at most, 82% correctly rounded, and exact
// at powers of two, so sigmoid saturates to exactly 1 and sigmoid(0) is 0.5 (y (2 - x y)
// there: 1.5e-7, 58%, and 1 / 1 = 0.99999994; checked on 4 million values of the range;
// with FMA contraction every one is correctly rounded). Eight multiply-adds vectorise into FMAs where
// a vector division holds the divider for 8-16 cycles: the LSTM forward loop at batch 32,
// hidden 256, 100 steps (five divisions per unit) took 7.8-8.6 ms against 9.0-9.8 with
// divisions, and 11.9-12.1 against 13.4-13.5 with saturated gates, on the 2-core Xeon.
FUSEDRNN_MATH float reciprocal(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  bits = 0x7EF311C3 - bits;
  float y;
  std::memcpy(&y, &bits, sizeof(y));
  y = y * (2.0f - x * y);
  y = y * (2.0f - x * y);
  return y + y * (1.0f - x * y);
}

// Saturated arguments are kept away from subnormal results: one subnormal operand costs a
// microcode assist of ~100 cycles on x86, and a saturated LSTM ran 27x slower for them.
// sigmoid(x) < 9e-27 below -60 is returned as 0; tanh is evaluated at |x| <= 10, where
// tanh(10) already rounds to 1 in float32.
FUSEDRNN_MATH float sigmoid(float x) {
  const float bounded = x < -60.0f ? -60.0f : x;  // NaN passes
  const float s = reciprocal(1.0f + exp_fast(-bounded));
  return x < -60.0f ? 0.0f : s;
}

FUSEDRNN_MATH float tanh(float x) {
  float a = std::fabs(x);
  a = a > 10.0f ? 10.0f : a;  // NaN passes
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float large = std::copysign(1.0f - 2.0f * reciprocal(exp_fast(2.0f * a) + 1.0f), x);
  return a < 0.625f ? small : large;
}

// bfloat16 as its 16 bits, converted with integer operations and selects only, so that the
// loops using them vectorise. Widening is exact; narrowing rounds to the nearest even, NaN
// staying a quiet NaN.
FUSEDRNN_MATH float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

FUSEDRNN_MATH uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return value != value ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded >> 16);
}

// A state or gradient about to be stored: float subnormals (|v| < 2^-126) become 0, so that
// none reaches the next step's product (MKL's kernels slow down on them as well); NaN
// passes. double values are stored as they are.
FUSEDRNN_MATH float flush(float v) { return std::fabs(v) < 1.17549435e-38f && v != 0.0f ? 0.0f : v; }

FUSEDRNN_MATH double flush(double v) { return v; }

FUSEDRNN_MATH double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

FUSEDRNN_MATH double tanh(double x) { return std::tanh(x); }

}  // namespace fusedrnn::cpu
