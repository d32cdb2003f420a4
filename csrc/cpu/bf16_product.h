// The per-step product of the bfloat16 time loops ({lstm,gru,rnn}_bf16_cpu.cpp): bfloat16
// operands, float32 results, on oneDNN's brgemm (brgemm.h) or MKL's cblas_gemm_bf16bf16f32.
//
// Measured on the 2-core AMD EPYC (Zen 4, AVX512-BF16), GFLOP/s at batch x K x N of 32 x 256
// x 1024, 64 x 512 x 2048, 8 x 128 x 512, 16 x 768 x 3072 and 1 x 256 x 1024: brgemm on two
// threads (half the columns each) 392, 440, 336, 436 and 105; MKL's two-thread product 111,
// 158, 56, 119 and 4. On a 2-core Xeon without AMX (AVX512-BF16 only) brgemm was the fast
// one for the bfloat16 kernels: the modules at 2^22 multiply-adds per step and above (batch
// 16-64, hidden 256-512) took 0.87-0.94 of their time on MKL's product, and the GRU and RNN at
// batch 64 / hidden 512 0.70-0.87 of the reference backend's, which auto ran there
// (benchmarks/results/xeon-emr-2core-bf16-brgemm-ab). On the 2-core Xeon with AMX, where
// oneDNN's brgemm runs on AMX tiles, it was faster still: bfloat16 modules from batch 8 /
// hidden 128 took 0.35-0.93 of their time on MKL's product (or widened to float32 on MKL),
// but the LSTM's training at batch 8, 1.02 (benchmarks/results/cpu-2core-bf16-amx-ab). So
// auto runs them on brgemm wherever oneDNN has a bfloat16 brgemm; MKL's stays for odd sizes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <ATen/ATen.h>

#include <cstdint>
#include <exception>
#include <optional>

#include "blas.h"
#include "transpose.h"

extern "C" {
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k,
                            float alpha, const uint16_t* a, int lda, const uint16_t* b, int ldb,
                            float beta, float* c, int ldc) __attribute__((weak));
}

namespace fusedrnn::cpu {

// Whether oneDNN runs a bfloat16 brgemm here: its enabled flag, then one small product, once
// per process (it raises where oneDNN's instruction set is below AVX512_CORE_BF16, for
// example capped by ONEDNN_MAX_CPU_ISA, or where its ukernels are not built).
inline bool bf16_brgemm_runs() {
  if (!kTorchHasBf16Brgemm || !at::globalContext().userEnabledMkldnn()) return false;
  static const bool runs = [] {
    try {
      // (1, 16) = (1, 2) @ (2, 16): a = [1, 1], b's pairs (k, k + 1) = (1, 2) in every column.
      const at::BFloat16 a[2] = {1.0f, 1.0f};
      at::BFloat16 b[32];
      for (int j = 0; j < 16; ++j) b[2 * j] = 1.0f, b[2 * j + 1] = 2.0f;
      float c[16] = {};
      aten_brgemm<at::BFloat16>(1, 16, 2, 2, 16, 16, /*add=*/false, a, b, c);
      at::native::cpublas::brgemm_release(/*is_vnni=*/true);
      return c[0] == 3.0f && c[15] == 3.0f;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return runs;
}

#if defined(__x86_64__) && defined(__GNUC__)
// Whether the CPU has AMX-BF16 (CPUID leaf 7, EDX bit 22) and the OS enabled its tile state
// (XCR0 bits 17 and 18, readable where CPUID leaf 1 reports OSXSAVE, ECX bit 27), asked
// once per process: in a virtual machine each CPUID can exit to the hypervisor (asked on
// every bfloat16 call, these took about 60 us of each on the 2-core Xeon with AMX).
inline bool amx_bf16_enabled() {
  static const bool enabled = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx >> 22 & 1u)) return false;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx >> 27 & 1u)) return false;
    unsigned xcr0_low = 0, xcr0_high = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    return (xcr0_low & 0x60000u) == 0x60000u;
  }();
  return enabled;
}
#endif

// Whether auto runs bfloat16 products on brgemm on this CPU (where bf16_brgemm_runs()): one
// with AVX512-BF16 or AMX-BF16, whoever made it.
inline bool bf16_brgemm_preferred() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool cpu = __builtin_cpu_supports("avx512bf16") || amx_bf16_enabled();
  return cpu;
#else
  return false;
#endif
}

// Whether bfloat16 products run on brgemm: where bf16_brgemm_runs(), under
// FUSEDRNN_CPU_GEMM=brgemm, or auto where bf16_brgemm_preferred() (elsewhere MKL's).
// oneDNN's kernel reads the operand it keeps fixed in pairs along K, so K must be even; odd
// ones stay on MKL.
inline bool bf16_uses_brgemm(int64_t k) {
  if (k % 2 != 0) return false;
  const bool wanted =
      gemm_mode() == "brgemm" || (gemm_mode() == "auto" && bf16_brgemm_preferred());
  return wanted && bf16_brgemm_runs();
}

// Whether the bfloat16 products on brgemm run on AMX tiles: oneDNN takes AMX where the CPU
// has AMX-BF16 and the OS enabled it (a cap set by ONEDNN_MAX_CPU_ISA is not seen here).
inline bool bf16_brgemm_on_amx() {
#if defined(__x86_64__) && defined(__GNUC__)
  return bf16_uses_brgemm(2) && amx_bf16_enabled();
#else
  return false;
#endif
}

// Whether MKL's bfloat16 product is there and allowed.
inline bool bf16_on_mkl() {
  return cblas_gemm_bf16bf16f32 != nullptr && gemm_mode() != "unpacked" &&
         gemm_mode() != "aten";
}

// Whether bfloat16 products with this K have a kernel here: brgemm or MKL's.
inline bool has_bf16_product(int64_t k) { return bf16_uses_brgemm(k) || bf16_on_mkl(); }

// The check at the entry of each bfloat16 time loop, `loop` naming it ("the bfloat16 GRU
// backward"), whose per-step products reduce over k.
inline void check_bf16_product(int64_t k, const char* loop) {
  TORCH_CHECK(has_bf16_product(k), "fusedrnn cpu backend: ", loop, " needs a bfloat16 product "
              "reducing over ", k, " (oneDNN's brgemm, even sizes only, or MKL's "
              "cblas_gemm_bf16bf16f32), which this torch lacks (or FUSEDRNN_CPU_GEMM is "
              "unpacked or aten); the cpu backend's Python side widens to float32 instead");
}

// out (B, m) float32 = a (B, k) @ op(w) for every step of one call, w (G, H) bfloat16
// row-major and fixed: op(w) = w^T (m = G, k = H) when `transpose`, else w (m = H, k = G).
// a and out contiguous. brgemm reads op(w) as (k/2, m, 2): pairs along k, made once here.
class Bf16Product {
 public:
  Bf16Product(const at::Tensor& w, bool transpose, int64_t batch)
      : w_(w), transpose_(transpose), batch_(batch), m_(transpose ? w.size(0) : w.size(1)),
        k_(transpose ? w.size(1) : w.size(0)), brgemm_(bf16_uses_brgemm(k_)) {
    TORCH_CHECK(has_bf16_product(k_), "fusedrnn cpu backend: no bfloat16 product here");
    panels_ = brgemm_ && transpose && m_ * k_ * int64_t{sizeof(uint16_t)} >= kPanelsFromBytes;
    if (brgemm_ && transpose) {
      // w (m, k): its pairs along k are 32-bit words, (m, k/2), and the layout is their
      // transpose, in panels as the float32 products' from kPanelsFromBytes (brgemm.h), by
      // the blocked copies of transpose.h.
      const at::Tensor words = w.contiguous().view(at::kInt);
      pairs_ = (panels_ ? transposed_in_panels(words, kPanelColumns) : transposed(words))
                   .view(at::kBFloat16);
    } else if (brgemm_) {
      pairs_ = w.reshape({k_ / 2, 2, m_}).transpose(1, 2).contiguous();  // w (k, m)
    }
    if (brgemm_) w_ = at::Tensor();  // read through pairs_ (no reference kept)
  }

  // Nothing prepared depends on the batch (set_batch()): as RecurrentProduct's.
  static bool prepares_per_batch(int64_t, int64_t) { return false; }

  // This product, prepared for another batch, for `batch` rows.
  void set_batch(int64_t batch) {
    TORCH_INTERNAL_ASSERT(!in_place_);
    batch_ = batch;
  }

  // Whether the forward products (transpose) of a call, `batch` rows in each of `steps`
  // steps reducing over k, run in place as bfloat16 row dots (row_dots.h): where the CPU
  // has AVX512-BF16, under FUSEDRNN_CPU_GEMM=auto, for the calls row_dots_pay() takes (one
  // row per step from kRowDotsBf16OneRowFrom).
  static bool in_place_pays(int64_t batch, int64_t steps, int64_t k) {
    return row_dots_pay(batch, steps, k, kRowDotsBf16OneRowFrom) && gemm_mode() == "auto" &&
           row_dots_bf16_runs();
  }

  // As RecurrentProduct::in_place: a @ W^T for W's rows in `rows`, a (blocks, n, K) view of
  // W read in place.
  static Bf16Product in_place(const at::Tensor& rows, int64_t batch) {
    Bf16Product product;
    product.in_place_.emplace(rows, batch);
    return product;
  }

  // Whether apply() reads w's own memory (no copy made of it): whatever keeps this product
  // keeps w.
  bool reads(const at::Tensor& w) const {
    return (w_.defined() && w_.is_alias_of(w)) ||
           (pairs_.defined() && pairs_.is_alias_of(w)) || (in_place_ && in_place_->reads(w));
  }

  void apply(float* out, const uint16_t* a) const {
    if (in_place_) {
      in_place_->apply(out, a);
      return;
    }
    if (batch_ == 0 || m_ == 0) return;
    if (!brgemm_) {
      constexpr int kRowMajor = 101;
      const int m = static_cast<int>(batch_), n = static_cast<int>(m_);
      const int k = static_cast<int>(k_);
      const auto* w = reinterpret_cast<const uint16_t*>(w_.data_ptr<at::BFloat16>());
      cblas_gemm_bf16bf16f32(kRowMajor, kNoTrans, transpose_ ? kTrans : kNoTrans, m, n, k, 1.0f,
                             a, k, w, transpose_ ? k : n, 0.0f, out, n);
      return;
    }
    if (k_ == 0) {
      std::fill(out, out + batch_ * m_, 0.0f);
      return;
    }
    for_column_blocks(
        batch_, m_, k_, [&](int64_t n0, int64_t n) { columns(out, a, n0, n); },
        panels_ ? kPanelColumns : kColumnBlockAlign);
  }

 private:
  Bf16Product() = default;

  // Columns [n0, n0 + n) of out on this thread, in brgemm.h's tiles (their blocks of k are
  // even, as pairs_ needs); in the panels of pairs_ where it has them, n0 a multiple of
  // kPanelColumns: panel j's pairs from bfloat16 element j k, (k/2, w_j, 2).
  void columns(float* out, const uint16_t* a, int64_t n0, int64_t n) const {
    const auto* a16 = reinterpret_cast<const at::BFloat16*>(a);
    const at::BFloat16* pairs = pairs_.data_ptr<at::BFloat16>();
    if (panels_) {
      for_each_panel_tile(batch_, n0, n, k_, m_, [&](int64_t i, int64_t rows, int64_t j,
                                                     int64_t width, int64_t p, int64_t depth) {
        aten_brgemm<at::BFloat16>(rows, width, depth, k_, width, m_, /*add=*/p > 0,
                                  a16 + i * k_ + p, pairs + j * k_ + p * width,
                                  out + i * m_ + j);
      });
    } else {
      for_each_tile(batch_, n, k_, [&](int64_t i, int64_t rows, int64_t j, int64_t columns,
                                       int64_t p, int64_t depth) {
        aten_brgemm<at::BFloat16>(rows, columns, depth, k_, m_, m_, /*add=*/p > 0,
                                  a16 + i * k_ + p, pairs + p * m_ + 2 * (n0 + j),
                                  out + i * m_ + n0 + j);
      });
    }
    // On AMX the kernel leaves its tile configuration loaded; other code on this thread
    // (torch's own oneDNN calls) may change it between two of these products.
    at::native::cpublas::brgemm_release(/*is_vnni=*/true);
  }

  at::Tensor w_, pairs_;
  bool transpose_ = true;
  int64_t batch_ = 0, m_ = 0, k_ = 0;
  bool brgemm_ = false, panels_ = false;  // panels_: pairs_ in panels (brgemm.h)
  std::optional<InPlaceRows<uint16_t, float>> in_place_;  // the row dots, where in place
};

}  // namespace fusedrnn::cpu
