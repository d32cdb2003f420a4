// float32 products on oneDNN's batch-reduce GEMM microkernel, which torch's ATen exposes as
// at::native::cpublas::brgemm (torch builds without it fall back to MKL; see blas.h).
//
// Measured on a 2-core AMD EPYC (Zen 4, AVX-512, torch 2.14's MKL), GFLOP/s of the LSTM's
// per-step product out (B, 4H) = h (B, H) @ W_hh^T, one thread: 105-113 with brgemm against
// 64-91 with MKL's packed form and 59-94 with torch.mm, at B x H of 8 x 128 to 64 x 512 and
// 16 x 768; two threads, each running brgemm on half of the gate columns: 214-222 against
// 84-164 for MKL's own two-thread packed product. torch.nn.LSTM reaches about 190 there
// through oneDNN. On the 2-core Intel Xeon of earlier sessions MKL's packed product ran at
// about 90% of that machine's peak, so Intel CPUs keep MKL; on another 2-core Xeon (no AMX)
// every float32 product on brgemm took 0.93-1.16 of MKL's time in the modules, inference
// and training (benchmarks/results/xeon-emr-2core-brgemm-ab).
// On a 2-core AMD EPYC of the next generation (Zen 5, full-width AVX-512), one thread: brgemm
// 220-250 GFLOP/s at B x H of 8 x 128 to 64 x 512 in blocks of up to 256 columns, torch.mm
// (MKL) 68-107.
#pragma once

#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace fusedrnn::cpu {

// Whether ATen declares at::native::cpublas::brgemm for T x T -> float. torch 2.6 declares
// the float32, bfloat16 and half ones but not the CPUBLAS_BRGEMM_* macros that later releases
// announce them with, so the declaration itself is asked for.
template <typename T, typename = void>
struct AtenBrgemm : std::false_type {};
template <typename T>
struct AtenBrgemm<T, std::void_t<decltype(at::native::cpublas::brgemm(
                         int64_t{}, int64_t{}, int64_t{}, int64_t{}, int64_t{}, int64_t{}, bool{},
                         std::declval<const T*>(), std::declval<const T*>(),
                         std::declval<float*>(), bool{}))>> : std::true_type {};

inline constexpr bool kTorchHasBrgemm = AtenBrgemm<float>::value;
inline constexpr bool kTorchHasBf16Brgemm = AtenBrgemm<at::BFloat16>::value;

// c (m, n) = (add ? c : 0) + a (m, k) @ b, through ATen's brgemm where it has one for T: b
// row-major (k, n) for float, in pairs along k for at::BFloat16 (oneDNN's VNNI layout:
// bf16_product.h); leading dimensions lda, ldb, ldc. Elsewhere it raises.
template <typename T>
void aten_brgemm(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                 bool add, const T* a, const T* b, float* c) {
  if constexpr (AtenBrgemm<T>::value) {
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, add, a, b, c,
                                /*is_vnni=*/!std::is_same_v<T, float>);
  } else {
    TORCH_CHECK(false, "fusedrnn cpu backend: this torch has no at::native::cpublas::brgemm "
                "for ", std::is_same_v<T, float> ? "float32" : "bfloat16");
  }
}

// c (m, n) = a (m, k) @ b (k, n), row-major with leading dimensions lda, ldb, ldc, on the
// calling thread. oneDNN generates one kernel per shape and thread on first use (about half a
// millisecond for an LSTM's first call at a new batch size) and keeps it for the process.
// With `add`, c += the product.
inline void brgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc, bool add = false) {
  aten_brgemm<float>(m, n, k, lda, ldb, ldc, add, a, b, c);
}

// The tiles brgemm's products run in: at most kTileRows x kTileColumns of the result, each
// summing k in blocks of kTileDepth (even: the bfloat16 products hold pairs along k). One
// call over a long k ran at half the rate (3200 x 2048 x 512: 112-133 GFLOP/s against
// 230-255 at k of 128 to 512, on one core of a 2-core AMD EPYC, Zen 5).
inline constexpr int64_t kTileRows = 64, kTileColumns = 256, kTileDepth = 512;

// tile(i, rows, j, columns, p, depth) for every tile of an (m, n) result reducing over k,
// the blocks of k of a tile one after the other, from p = 0.
template <typename Tile>
void for_each_tile(int64_t m, int64_t n, int64_t k, const Tile& tile) {
  for (int64_t i = 0; i < m; i += kTileRows) {
    for (int64_t j = 0; j < n; j += kTileColumns) {
      for (int64_t p = 0; p < k; p += kTileDepth) {
        tile(i, std::min(kTileRows, m - i), j, std::min(kTileColumns, n - j), p,
             std::min(kTileDepth, k - p));
      }
    }
  }
}

// The same product of any size, on the calling thread, in those tiles; with `add`,
// c += the product (k = 0 then leaves c as it is).
inline void brgemm_tiled(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* b, int64_t ldb, float* c, int64_t ldc, bool add) {
  if (k == 0 && !add) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  for_each_tile(m, n, k, [&](int64_t i, int64_t rows, int64_t j, int64_t columns, int64_t p,
                             int64_t depth) {
    brgemm(rows, columns, depth, a + i * lda + p, lda, b + p * ldb + j, ldb, c + i * ldc + j,
           ldc, add || p > 0);
  });
}

// A fixed (k, m) operand read step after step (the forward's W_hh^T) stored as panels of
// kPanelColumns columns: panel j holds the columns [64 j, 64 j + w_j) of all k rows,
// contiguous (row stride w_j, 64 but for the last), panel j at offset 64 j k. Rows of a
// matrix m wide sit at a power-of-two stride for the usual hidden sizes, where brgemm's
// reads of a tile's rows collide in the cache once the operand no longer fits in L2. One
// core of a 2-core AMD EPYC (Zen 5), out (B, m) = a (B, k) @ w, time in panels over time
// as one matrix: m 1024 or 2048, k 512 (2 or 4 MiB): B 8 0.70, B 16 and 32 0.85-0.87, B 64
// 0.90-0.91; operands of 512 KiB (in L2) 0.96-0.98; m 1536, k 768 (no power of two)
// 0.94-1.00. A stride padded by 16 columns gained most of it (0.75-0.92); panels of 128 or
// 256 columns as much as of 64 (benchmarks/results/epyc-zen5-2core-panels-ab). Operands
// under 512 KiB keep the one matrix (modules at hidden 128 gained nothing): a product of one
// batch row over 256 columns is one brgemm call on it, four on panels, and each call costs
// its kernel's lookup (a bfloat16 LSTM of hidden 64 at batch 1 took 1.2x the time on
// panels).
inline constexpr int64_t kPanelColumns = 64;
inline constexpr int64_t kPanelsFromBytes = int64_t{1} << 19;

// tile(i, rows, j, width, p, depth) for every tile of the columns [n0, n0 + n) of a
// (rows, m) result whose (k, m) operand is in panels, n0 a multiple of kPanelColumns: tiles
// of kTileRows rows, one panel wide (the panel at column j, `width` columns), each summing k
// in blocks of kTileDepth from p = 0.
template <typename Tile>
void for_each_panel_tile(int64_t rows, int64_t n0, int64_t n, int64_t k, int64_t m,
                         const Tile& tile) {
  for (int64_t i = 0; i < rows; i += kTileRows) {
    for (int64_t j = n0; j < n0 + n; j += kPanelColumns) {
      for (int64_t p = 0; p < k; p += kTileDepth) {
        tile(i, std::min(kTileRows, rows - i), j, std::min(kPanelColumns, m - j), p,
             std::min(kTileDepth, k - p));
      }
    }
  }
}

// c (rows, n) = a (rows, k) @ the columns [n0, n0 + n) of a (k, m) operand in panels.
inline void brgemm_panels(int64_t rows, int64_t n0, int64_t n, int64_t k, const float* a,
                          int64_t lda, const float* panels, int64_t m, float* c, int64_t ldc) {
  for_each_panel_tile(rows, n0, n, k, m, [&](int64_t i, int64_t tile_rows, int64_t j,
                                             int64_t width, int64_t p, int64_t depth) {
    brgemm(tile_rows, width, depth, a + i * lda + p, lda, panels + j * k + p * width, width,
           c + i * ldc + j, ldc, /*add=*/p > 0);
  });
}

// Whether auto picks brgemm for float32 products: torch has it, its oneDNN is enabled
// (torch.backends.mkldnn.enabled; without it brgemm is an unpacked MKL call) and the CPU is
// an x86 with AVX2 (what oneDNN's float32 kernel needs) that is not Intel's (see above).
inline bool brgemm_preferred() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool cpu = __builtin_cpu_supports("avx2") && !__builtin_cpu_is("intel");
#else
  static const bool cpu = false;
#endif
  return kTorchHasBrgemm && cpu && at::globalContext().userEnabledMkldnn();
}

}  // namespace fusedrnn::cpu
