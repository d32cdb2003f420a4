// The forward rows of the CPU kernels (lstm_rows.h, gru_rows.h, rnn_rows.h: the LSTM's, the
// GRU's and the tanh RNN's) written with AVX-512 intrinsics, for CPUs that have AVX-512F: the
// same math as cpu_math.h with two instructions the compiler does not generate from the
// portable code. exp scales by 2^n with vscalefps (instead of building the exponent bits:
// four operations), and 1 / x starts from vrcp14ps's 14-bit estimate (exact at powers of
// two) and needs one Newton step, with the residual, instead of three. Over every float
// input the largest relative errors against double are those of the portable code, 1.48e-7
// for sigmoid and 1.42e-7 for tanh, and the two differ by at most 1 ulp; sigmoid saturates
// to exactly 1 and 0 at the same inputs, sigmoid(0) is 0.5, NaN passes, subnormal results
// become 0 and -0 stays -0. The LSTM's row alone, 32 rows of 256 units in cache, on the
// 2-core AMD EPYC (Zen 4): 2.59 ns per unit against 3.86 for the portable code's AVX-512
// clone. The bfloat16 LSTM loop's row (lstm_fwd_row_bf16_avx512) converts its bfloat16
// inputs and outputs inside, where the portable path widens them into float32 rows before
// and narrows after: forward op 3-9% faster at batch 2-64 except 32 x 256 (equal), module
// 1-5% (benchmarks/results/epyc-2core-bf16-unit-split-ab).
#include <cstdint>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

#include "avx512_rows.h"

namespace fusedrnn::cpu {

// FUSEDRNN_CPU_MATH: "auto" (default: AVX-512 rows, and the float32 row dots of
// row_dots_avx512.cpp, where the CPU has AVX-512F) or "portable" (the vectorised templates of
// *_rows.h and row_dots.h everywhere; the tests run both). Read once.
std::string math_mode() {
  static const std::string mode = [] {
    const char* value = std::getenv("FUSEDRNN_CPU_MATH");
    return std::string(value == nullptr || *value == '\0' ? "auto" : value);
  }();
  TORCH_CHECK(mode == "auto" || mode == "portable",
              "FUSEDRNN_CPU_MATH must be auto or portable, got '", mode, "'");
  return mode;
}

}  // namespace fusedrnn::cpu

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

// GCC 12's masked-load intrinsics start from a vector initialised from itself, which
// -Wmaybe-uninitialized reports at every inlined use: dozens of false warnings per build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define FUSEDRNN_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define FUSEDRNN_AVX512_ENTRY __attribute__((target("avx512f")))

namespace fusedrnn::cpu {
namespace {

FUSEDRNN_AVX512 __m512 splat(float v) { return _mm512_set1_ps(v); }

// cpu_math.h's exp_fast: the same range reduction and polynomial; 2^n by vscalefps.
FUSEDRNN_AVX512 __m512 exp16(__m512 x) {
  x = _mm512_max_ps(splat(-86.0f), x);  // NaN passes: max and min return their second operand
  x = _mm512_min_ps(splat(88.3f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, splat(0.693359375f), x);
  x = _mm512_fmadd_ps(n, splat(2.12194440e-4f), x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = splat(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, x, splat(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, x, splat(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, x, splat(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, x, splat(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, x, splat(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, z, x), splat(1.0f));  // (p z + x) + 1, as Cephes
  return _mm512_scalef_ps(p, n);
}

// 1 / x for 1 <= x: vrcp14ps (relative error below 2^-14, exact at powers of two), then
// y + y (1 - x y).
FUSEDRNN_AVX512 __m512 reciprocal16(__m512 x) {
  const __m512 y = _mm512_rcp14_ps(x);
  return _mm512_fmadd_ps(y, _mm512_fnmadd_ps(x, y, splat(1.0f)), y);
}

// As cpu_math.h's: the argument bounded at -60 (so that 1 + e^-x stays far from the top of
// the float range, where the reciprocal would be subnormal), 0 below.
FUSEDRNN_AVX512 __m512 sigmoid16(__m512 x) {
  const __mmask16 low = _mm512_cmp_ps_mask(x, splat(-60.0f), _CMP_LT_OQ);
  const __m512 bounded = _mm512_max_ps(splat(-60.0f), x);  // NaN passes
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), bounded));
  return _mm512_mask_mov_ps(reciprocal16(_mm512_add_ps(splat(1.0f), e)), low,
                            _mm512_setzero_ps());
}

FUSEDRNN_AVX512 __m512 tanh16(__m512 x) {
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i bits = _mm512_castps_si512(x);
  const __m512 a = _mm512_min_ps(splat(10.0f), _mm512_castsi512_ps(_mm512_andnot_si512(sign, bits)));
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = splat(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, z, splat(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, z, splat(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, z, splat(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, z, splat(-3.33332819422e-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(x, z), p, x);
  const __m512 r = reciprocal16(_mm512_add_ps(exp16(_mm512_add_ps(a, a)), splat(1.0f)));
  const __m512 magnitude = _mm512_fnmadd_ps(splat(2.0f), r, splat(1.0f));
  const __m512 large = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(magnitude), _mm512_and_si512(sign, bits)));
  const __mmask16 is_small = _mm512_cmp_ps_mask(a, splat(0.625f), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(large, is_small, small);
}

// cpu_math.h's flush: 0 < |v| < 2^-126 becomes 0 (-0 stays -0); NaN passes.
FUSEDRNN_AVX512 __m512 flush16(__m512 v) {
  const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(
      _mm512_set1_epi32(static_cast<int>(0x80000000u)), _mm512_castps_si512(v)));
  const __mmask16 below = _mm512_cmp_ps_mask(a, splat(1.17549435e-38f), _CMP_LT_OQ);
  const __mmask16 tiny = _mm512_mask_cmp_ps_mask(below, a, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  return _mm512_mask_mov_ps(v, tiny, _mm512_setzero_ps());
}

// The float32 rows take this many blocks of 16 units per iteration, each step of the cell
// for all of them before the next: a row's chains of dependent operations (exp, reciprocal,
// the state) are long, and with one block at a time too few run at once. The LSTM's row on
// the 2-core AMD EPYC (Zen 5), ns per unit: 1.65 against 2.01 in cache (32 rows of 256
// units), 1.94-2.00 against 3.23-5.24 reading each step's x projection from a 26 MB buffer
// (64 rows of 512 units, 50 steps).
constexpr int kBlocksAtOnce = 2;

// `statement` for u = 0 .. K-1 (K, a template argument: unrolled).
#define FUSEDRNN_EACH_BLOCK(statement) \
  _Pragma("GCC unroll 4") for (int u = 0; u < K; ++u) statement

// The lanes of the last, partial block of `left` < 16 units (all 16 from 16 on).
FUSEDRNN_AVX512 __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// The pre-activation of one gate for the lanes of m: x W_ih^T + h W_hh^T + b.
FUSEDRNN_AVX512 __m512 gate16(__mmask16 m, const float* xg, const float* hg, const float* b) {
  return _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(m, xg), _mm512_maskz_loadu_ps(m, hg)),
                       _mm512_maskz_loadu_ps(m, b));
}

// n <= 16 bfloat16 values as float32 (the lanes past n: 0). A full vector is one 32-byte
// load; a shorter one goes through a zeroed buffer (masked 16-bit loads need AVX512BW).
FUSEDRNN_AVX512 __m512 widen16(const uint16_t* p, int64_t n) {
  __m256i bits;
  if (n >= 16) {
    bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  } else {
    alignas(32) uint16_t tail[16] = {};
    for (int64_t j = 0; j < n; ++j) tail[j] = p[j];
    bits = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
  }
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// v as bfloat16 bits in the low half of each 32-bit lane, rounded to the nearest even as
// cpu_math.h's float_to_bf16 (NaN as 0x7FC0).
FUSEDRNN_AVX512 __m512i bf16_bits16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
}

// The lanes of m of v stored as bfloat16 (bf16_bits16).
FUSEDRNN_AVX512 void narrow16(uint16_t* p, __mmask16 m, __m512 v) {
  _mm512_mask_cvtepi32_storeu_epi16(p, m, bf16_bits16(v));
}

// gate16 with x in bfloat16, n of whose values are left from xg.
FUSEDRNN_AVX512 __m512 gate16(__mmask16 m, int64_t n, const uint16_t* xg, const float* hg,
                              const float* b) {
  return _mm512_add_ps(_mm512_add_ps(widen16(xg, n), _mm512_maskz_loadu_ps(m, hg)),
                       _mm512_maskz_loadu_ps(m, b));
}

}  // namespace

FUSEDRNN_AVX512_ENTRY void lstm_fwd_row_bf16_avx512(const uint16_t* xg, int64_t xs,
                                                    const float* hg, int64_t hs,
                                                    const float* bias, int64_t bs,
                                                    uint16_t* g, int64_t gs,
                                                    const float* c_prev, float* c_out,
                                                    uint16_t* cell, uint16_t* y,
                                                    uint16_t* h_next, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const int64_t left = n - j;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const auto* x = xg + j;
    const float* h_gates = hg + j;
    const float* b = bias + j;
    const __m512 i = sigmoid16(gate16(m, left, x, h_gates, b));
    const __m512 f = sigmoid16(gate16(m, left, x + xs, h_gates + hs, b + bs));
    const __m512 gg = tanh16(gate16(m, left, x + 2 * xs, h_gates + 2 * hs, b + 2 * bs));
    const __m512 o = sigmoid16(gate16(m, left, x + 3 * xs, h_gates + 3 * hs, b + 3 * bs));
    const __m512 c_before = _mm512_maskz_loadu_ps(m, c_prev + j);
    const __m512 c = flush16(_mm512_add_ps(_mm512_mul_ps(f, c_before), _mm512_mul_ps(i, gg)));
    const __m512 h = flush16(_mm512_mul_ps(o, tanh16(c)));
    _mm512_mask_storeu_ps(c_out + j, m, c);
    const __m512i h_bits = bf16_bits16(h);
    _mm512_mask_cvtepi32_storeu_epi16(y + j, m, h_bits);
    _mm512_mask_cvtepi32_storeu_epi16(h_next + j, m, h_bits);
    if (g != nullptr) {
      narrow16(g + j, m, i);
      narrow16(g + gs + j, m, f);
      narrow16(g + 2 * gs + j, m, gg);
      narrow16(g + 3 * gs + j, m, o);
    }
    if (cell != nullptr) narrow16(cell + j, m, c);
  }
}

namespace {

// The LSTM's row for the K blocks of 16 units from j (lanes of m each), each step of the
// cell for all K before the next, so that K chains of dependent operations are in flight at
// once (see kBlocksAtOnce).
template <int K>
FUSEDRNN_AVX512 void lstm_fwd_blocks(const float* xg, const float* hg, const float* bias,
                                     float* g, int64_t xs, int64_t hs, const float* c_prev,
                                     float* cell, float* y, float* h_next, int64_t j,
                                     __mmask16 m) {
  // Every load first, then the activations: the loads of all K blocks are in flight at once.
  __m512 i[K], f[K], gg[K], o[K], c[K], h[K];
  FUSEDRNN_EACH_BLOCK({
    const int64_t at = j + 16 * u;
    i[u] = gate16(m, xg + at, hg + at, bias + at);
    f[u] = gate16(m, xg + xs + at, hg + hs + at, bias + xs + at);
    gg[u] = gate16(m, xg + 2 * xs + at, hg + 2 * hs + at, bias + 2 * xs + at);
    o[u] = gate16(m, xg + 3 * xs + at, hg + 3 * hs + at, bias + 3 * xs + at);
  });
  FUSEDRNN_EACH_BLOCK(i[u] = sigmoid16(i[u]));
  FUSEDRNN_EACH_BLOCK(f[u] = sigmoid16(f[u]));
  FUSEDRNN_EACH_BLOCK(gg[u] = tanh16(gg[u]));
  FUSEDRNN_EACH_BLOCK(o[u] = sigmoid16(o[u]));
  FUSEDRNN_EACH_BLOCK(c[u] = flush16(_mm512_add_ps(
                          _mm512_mul_ps(f[u], _mm512_maskz_loadu_ps(m, c_prev + j + 16 * u)),
                          _mm512_mul_ps(i[u], gg[u]))));
  FUSEDRNN_EACH_BLOCK(h[u] = flush16(_mm512_mul_ps(o[u], tanh16(c[u]))));
  FUSEDRNN_EACH_BLOCK({
    const int64_t at = j + 16 * u;
    _mm512_mask_storeu_ps(g + at, m, i[u]);
    _mm512_mask_storeu_ps(g + xs + at, m, f[u]);
    _mm512_mask_storeu_ps(g + 2 * xs + at, m, gg[u]);
    _mm512_mask_storeu_ps(g + 3 * xs + at, m, o[u]);
    _mm512_mask_storeu_ps(cell + at, m, c[u]);
    _mm512_mask_storeu_ps(y + at, m, h[u]);
    _mm512_mask_storeu_ps(h_next + at, m, h[u]);
  });
}

}  // namespace

FUSEDRNN_AVX512_ENTRY void lstm_fwd_row_avx512(const float* xg, const float* hg,
                                               const float* bias, float* g, int64_t xs,
                                               int64_t hs, const float* c_prev, float* cell,
                                               float* y, float* h_next, int64_t n) {
  int64_t j = 0;
  for (; j + 16 * kBlocksAtOnce <= n; j += 16 * kBlocksAtOnce) {
    lstm_fwd_blocks<kBlocksAtOnce>(xg, hg, bias, g, xs, hs, c_prev, cell, y, h_next, j, 0xFFFF);
  }
  for (; j < n; j += 16) {
    lstm_fwd_blocks<1>(xg, hg, bias, g, xs, hs, c_prev, cell, y, h_next, j, tail_mask(n - j));
  }
}

namespace {

// The GRU's row for K blocks of 16 units from j, as lstm_fwd_blocks.
template <int K>
FUSEDRNN_AVX512 void gru_fwd_blocks(const float* xg, const float* b_ih, const float* hg,
                                    float* g, const float* b_hh, const float* h_prev,
                                    float* hidden_n, float* y, float* h_next, int64_t xs,
                                    int64_t hs, int64_t j, __mmask16 m) {
  // Every load first, as lstm_fwd_blocks.
  __m512 r[K], z[K], hn[K], xn[K], nn[K], h[K];
  FUSEDRNN_EACH_BLOCK({
    const int64_t at = j + 16 * u;
    r[u] = _mm512_add_ps(gate16(m, xg + at, b_ih + at, hg + at),
                         _mm512_maskz_loadu_ps(m, b_hh + at));
    z[u] = _mm512_add_ps(gate16(m, xg + xs + at, b_ih + xs + at, hg + hs + at),
                         _mm512_maskz_loadu_ps(m, b_hh + xs + at));
    hn[u] = _mm512_add_ps(_mm512_maskz_loadu_ps(m, hg + 2 * hs + at),
                          _mm512_maskz_loadu_ps(m, b_hh + 2 * xs + at));
    xn[u] = _mm512_add_ps(_mm512_maskz_loadu_ps(m, xg + 2 * xs + at),
                          _mm512_maskz_loadu_ps(m, b_ih + 2 * xs + at));
  });
  FUSEDRNN_EACH_BLOCK(r[u] = sigmoid16(r[u]));
  FUSEDRNN_EACH_BLOCK(z[u] = sigmoid16(z[u]));
  FUSEDRNN_EACH_BLOCK(nn[u] = tanh16(_mm512_add_ps(xn[u], _mm512_mul_ps(r[u], hn[u]))));
  FUSEDRNN_EACH_BLOCK(h[u] = flush16(_mm512_add_ps(
                          nn[u], _mm512_mul_ps(z[u], _mm512_sub_ps(
                                     _mm512_maskz_loadu_ps(m, h_prev + j + 16 * u), nn[u])))));
  FUSEDRNN_EACH_BLOCK({
    const int64_t at = j + 16 * u;
    _mm512_mask_storeu_ps(g + at, m, r[u]);
    _mm512_mask_storeu_ps(g + xs + at, m, z[u]);
    _mm512_mask_storeu_ps(g + 2 * xs + at, m, nn[u]);
    _mm512_mask_storeu_ps(hidden_n + at, m, hn[u]);
    _mm512_mask_storeu_ps(y + at, m, h[u]);
    _mm512_mask_storeu_ps(h_next + at, m, h[u]);
  });
}

// The tanh RNN's row for K blocks of 16 units from j, as lstm_fwd_blocks.
template <int K>
FUSEDRNN_AVX512 void rnn_tanh_fwd_blocks(const float* xg, const float* hg, const float* bias,
                                         float* y, float* h_next, int64_t j, __mmask16 m) {
  __m512 h[K];
  FUSEDRNN_EACH_BLOCK(h[u] = flush16(tanh16(gate16(m, xg + j + 16 * u, hg + j + 16 * u,
                                                   bias + j + 16 * u))));
  FUSEDRNN_EACH_BLOCK({
    _mm512_mask_storeu_ps(y + j + 16 * u, m, h[u]);
    _mm512_mask_storeu_ps(h_next + j + 16 * u, m, h[u]);
  });
}

}  // namespace

FUSEDRNN_AVX512_ENTRY void gru_fwd_row_avx512(const float* xg, const float* b_ih,
                                              const float* hg, float* g, const float* b_hh,
                                              const float* h_prev, float* hidden_n, float* y,
                                              float* h_next, int64_t xs, int64_t hs,
                                              int64_t n) {
  int64_t j = 0;
  for (; j + 16 * kBlocksAtOnce <= n; j += 16 * kBlocksAtOnce) {
    gru_fwd_blocks<kBlocksAtOnce>(xg, b_ih, hg, g, b_hh, h_prev, hidden_n, y, h_next, xs, hs,
                                  j, 0xFFFF);
  }
  for (; j < n; j += 16) {
    gru_fwd_blocks<1>(xg, b_ih, hg, g, b_hh, h_prev, hidden_n, y, h_next, xs, hs, j,
                      tail_mask(n - j));
  }
}

FUSEDRNN_AVX512_ENTRY void rnn_tanh_fwd_row_avx512(const float* xg, const float* hg,
                                                   const float* bias, float* y, float* h_next,
                                                   int64_t hidden) {
  int64_t j = 0;
  for (; j + 16 * kBlocksAtOnce <= hidden; j += 16 * kBlocksAtOnce) {
    rnn_tanh_fwd_blocks<kBlocksAtOnce>(xg, hg, bias, y, h_next, j, 0xFFFF);
  }
  for (; j < hidden; j += 16) {
    rnn_tanh_fwd_blocks<1>(xg, hg, bias, y, h_next, j, tail_mask(hidden - j));
  }
}

bool avx512_rows() {
  static const bool on = [] {
    // The mode first: a value other than auto or portable raises on every CPU.
    return math_mode() == "auto" && __builtin_cpu_supports("avx512f");
  }();
  return on;
}

}  // namespace fusedrnn::cpu

#else

namespace fusedrnn::cpu {

void lstm_fwd_row_avx512(const float*, const float*, const float*, float*, int64_t, int64_t,
                         const float*, float*, float*, float*, int64_t) {
  std::abort();  // never called: avx512_rows() is false
}

void lstm_fwd_row_bf16_avx512(const uint16_t*, int64_t, const float*, int64_t, const float*,
                              int64_t, uint16_t*, int64_t, const float*, float*, uint16_t*,
                              uint16_t*, uint16_t*, int64_t) {
  std::abort();
}

void gru_fwd_row_avx512(const float*, const float*, const float*, float*, const float*,
                        const float*, float*, float*, float*, int64_t, int64_t, int64_t) {
  std::abort();
}

void rnn_tanh_fwd_row_avx512(const float*, const float*, const float*, float*, float*,
                             int64_t) {
  std::abort();
}

bool avx512_rows() {
  math_mode();  // refuses an unknown FUSEDRNN_CPU_MATH here too
  return false;
}

}  // namespace fusedrnn::cpu

#endif
