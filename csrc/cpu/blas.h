// The per-step product of the CPU time loops, out = a @ op(w) with w the step's fixed
// recurrent weights, straight into the BLAS that torch is linked with: one ATen call costs
// microseconds of dispatch, which at batch 1 is more than the product itself.
//
// The forward's products of calls of one batch row per step, or of a few rows in all, run
// as dot products of w's rows in place (row_dots.h, RecurrentProduct::in_place). Other
// float32 products run on oneDNN's brgemm where it is the faster one (brgemm.h). Otherwise:
// torch's x86 wheels export MKL's Fortran sgemm_/dgemm_ and its packed-GEMM API, declared
// weak here so that a torch without them still loads this library (the product then goes
// through ATen). Measured on a 2-core AVX-512 Xeon (us per product, batch x hidden, LSTM
// gates): with w packed once per call, 47 vs 75 (sgemm_ reading w transposed) at 32 x 256
// and 383 vs 553 at 64 x 512; with w transposed once into the layout gemm("N", "N") reads,
// 4.9 vs 8.4 at 8 x 128 and 0.6 vs 1.8 at 1 x 64, where packing gains nothing.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>

#include "brgemm.h"
#include "row_dots.h"
#include "transpose.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) __attribute__((weak));
}

namespace fusedrnn::cpu {

// FUSEDRNN_CPU_GEMM picks how the products run: "auto" (default: as described above),
// "brgemm" (float32 products on brgemm on any CPU, the bfloat16 kernels' where oneDNN runs
// them: bf16_product.h), "mkl" (never brgemm), "unpacked" (neither
// brgemm nor MKL's packed form) or "aten" (every product through ATen, as where torch exports
// no BLAS); the tests run each. Read once.
inline const std::string& gemm_mode() {
  static const std::string mode = [] {
    const char* value = std::getenv("FUSEDRNN_CPU_GEMM");
    return std::string(value == nullptr || *value == '\0' ? "auto" : value);
  }();
  TORCH_CHECK(mode == "auto" || mode == "brgemm" || mode == "mkl" || mode == "unpacked" ||
                  mode == "aten",
              "FUSEDRNN_CPU_GEMM must be auto, brgemm, mkl, unpacked or aten, got '", mode, "'");
  return mode;
}

// Whether the recurrent products of scalar_t run on brgemm.
template <typename scalar_t>
bool uses_brgemm() {
  if (!std::is_same_v<scalar_t, float>) return false;
  if (gemm_mode() == "brgemm") {
    TORCH_CHECK(kTorchHasBrgemm, "FUSEDRNN_CPU_GEMM=brgemm: this torch's ATen has no float32 "
                "at::native::cpublas::brgemm");
    return true;
  }
  return gemm_mode() == "auto" && brgemm_preferred();
}

inline bool uses_brgemm(at::ScalarType dtype) {
  return dtype == at::kFloat && uses_brgemm<float>();
}

// MKL's CBLAS enum values.
constexpr int kColMajor = 102, kNoTrans = 111, kTrans = 112, kPacked = 151, kAMatrix = 161;
// Packing pays from weights of about 4 x 181 x 181 elements on (see the figures above).
constexpr int64_t kPackFrom = 131072;
// A brgemm product outside a parallel region runs on torch's threads, each on a block of
// the output's columns, from this many multiply-adds on (as UnitSplit splits a step).
constexpr int64_t kThreadedFrom = 1 << 18;

// fn(n0, n) for blocks [n0, n0 + n) covering the columns [0, m) of a brgemm product of
// batch x m x k multiply-adds: one block on this thread inside a parallel region, with one
// thread or below kThreadedFrom; else blocks a multiple of `align` wide on torch's threads
// (the vector width, or a product's panels: brgemm.h).
constexpr int64_t kColumnBlockAlign = 16;
template <typename Fn>
void for_column_blocks(int64_t batch, int64_t m, int64_t k, const Fn& fn,
                       int64_t align = kColumnBlockAlign) {
  const int64_t threads = at::get_num_threads();
  if (at::in_parallel_region() || threads == 1 || batch * m * k < kThreadedFrom) {
    fn(int64_t{0}, m);
    return;
  }
  const int64_t chunk = ((m + threads - 1) / threads + align - 1) / align * align;
  at::parallel_for(0, (m + chunk - 1) / chunk, 1, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) fn(p * chunk, std::min(chunk, m - p * chunk));
  });
}

// c = beta * c, the product of an empty sum (k = 0), on a column-major (m, n) c: BLAS refuses
// the leading dimension of 0 that k = 0 can give and then writes nothing.
template <typename scalar_t>
void scale_matrix(int64_t m, int64_t n, scalar_t beta, scalar_t* c, int64_t ldc) {
  for (int64_t j = 0; j < n; ++j) {
    scalar_t* column = c + j * ldc;
    for (int64_t i = 0; i < m; ++i) {
      column[i] = beta == scalar_t(0) ? scalar_t(0) : beta * column[i];  // no NaN * 0
    }
  }
}

inline void blas_gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                      float* c, int ldc) {
  const char no = 'N';
  const float one = 1, zero = 0;
  sgemm_(&no, &no, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}

inline void blas_gemm(int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                      double* c, int ldc) {
  const char no = 'N';
  const double one = 1, zero = 0;
  dgemm_(&no, &no, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}

// c = op(a) @ op(b) + beta * c on column-major matrices: op(a) (m, k), op(b) (k, n), c
// (m, n); op transposes when the flag is set. The caller's BLAS threading applies; through
// ATen where torch exports no BLAS (or FUSEDRNN_CPU_GEMM=aten) or a size exceeds int.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const scalar_t* a,
          int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) return scale_matrix(m, n, beta, c, ldc);
  const bool fits = std::max({m, n, k, lda, ldb, ldc}) <= INT_MAX;
  const bool blas = std::is_same_v<scalar_t, float> ? sgemm_ != nullptr : dgemm_ != nullptr;
  if (fits && blas && gemm_mode() != "aten") {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    const scalar_t one = 1;
    if constexpr (std::is_same_v<scalar_t, float>) {
      sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
    } else {
      dgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
    }
    return;
  }
  // A column-major (rows, cols) matrix with leading dimension ld, as a strided tensor.
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto matrix = [&](const scalar_t* p, int64_t rows, int64_t cols, int64_t ld) {
    return at::from_blob(const_cast<scalar_t*>(p), {rows, cols}, {1, ld}, options);
  };
  const at::Tensor op_a = trans_a ? matrix(a, k, m, lda).t() : matrix(a, m, k, lda);
  const at::Tensor op_b = trans_b ? matrix(b, n, k, ldb).t() : matrix(b, k, n, ldb);
  at::Tensor out = matrix(c, m, n, ldc);
  out.addmm_(op_a, op_b, beta, 1);
}

// The product of `batch` rows of a @ W^T as row dots (row_dots.h) of W's rows in `rows`, a
// (blocks, n, K) view of W read in place (its rows contiguous, each block at a stride of its
// own): out column c is the dot product with row c % n of block c / n. Elem: float, double,
// or uint16_t for bfloat16 (float32 sums, where row_dots_bf16_runs()); Out the sums' type.
// Whatever keeps it keeps W. RecurrentProduct's and Bf16Product's in-place form.
template <typename Elem, typename Out>
class InPlaceRows {
 public:
  InPlaceRows(const at::Tensor& rows, int64_t batch)
      : view_(rows), batch_(batch), rows_(rows.size(1)), block_stride_(rows.stride(0)),
        columns_(rows.size(0) * rows.size(1)), k_(rows.size(2)) {
    // Empty views read nothing (their strides are arbitrary).
    TORCH_INTERNAL_ASSERT(rows.dim() == 3);
    TORCH_INTERNAL_ASSERT(rows.numel() == 0 ||
                          (rows.stride(2) == 1 && rows.stride(1) == rows.size(2)));
  }

  bool reads(const at::Tensor& w) const { return view_.is_alias_of(w); }

  // out (batch, columns) = a (batch, K) @ W's rows^T; both contiguous.
  void apply(Out* out, const Elem* a) const {
    const auto* w = static_cast<const Elem*>(view_.const_data_ptr());
    for_column_blocks(batch_, columns_, k_, [&](int64_t c0, int64_t n) {
      if constexpr (std::is_same_v<Elem, uint16_t>) {
        row_dots_bf16(w, rows_, block_stride_, k_, c0, c0 + n, a, batch_, out, columns_);
      } else {
        row_dots(w, rows_, block_stride_, k_, c0, c0 + n, a, batch_, out, columns_);
      }
    });
  }

 private:
  at::Tensor view_;
  int64_t batch_, rows_, block_stride_, columns_, k_;
};

// out (B, m) = a (B, k) @ op(w) for every step of one call, w (G, H) row-major and fixed,
// B = `batch`:
// op(w) = w^T (m = G, k = H: the forward's h @ W_hh^T) when `transpose`, else w (m = H,
// k = G: the backward's dgates @ W_hh). All tensors contiguous, of w's dtype.
// Row-major out (B, m) is column-major out^T (m, B) = op(w)^T a^T, one gemm("N", "N") on
// w's data read as the column-major (m, k) matrix: w itself when not transposing, else a
// transposed copy or MKL's packed form, made once here (apply() allocates nothing on the BLAS
// and brgemm paths, so it may run inside an OpenMP parallel region; the aten path's
// at::mm_out runs there too, on tensors wrapping the buffers). brgemm reads the same data as
// the row-major (k, m) matrix op(w): w in place, or w^T copied, in panels from
// kPanelsFromBytes (brgemm.h); out row-major.
template <typename scalar_t>
class RecurrentProduct {
 public:
  RecurrentProduct(const at::Tensor& w, bool transpose, int64_t batch)
      : weight_(w), w_(w), transpose_(transpose), batch_(batch),
        m_(transpose ? w.size(0) : w.size(1)), k_(transpose ? w.size(1) : w.size(0)),
        ld_(transpose ? m_ : std::max<int64_t>(w.stride(0), 1)) {
    // Without transposing, w may be a block of columns of a larger matrix (its rows at a
    // stride, read in place: UnitSplit::column_blocks); transposed, it is copied anyway.
    TORCH_INTERNAL_ASSERT(transpose || w.numel() == 0 || (w.stride(1) == 1 && ld_ >= m_));
    const bool fits = m_ <= INT_MAX && k_ <= INT_MAX && batch <= INT_MAX && ld_ <= INT_MAX;
    blas_ = fits && gemm_mode() != "aten" &&
            (std::is_same_v<scalar_t, float> ? sgemm_ != nullptr : dgemm_ != nullptr);
    brgemm_ = fits && uses_brgemm<scalar_t>();
    packable_ = !brgemm_ && packs(m_, k_);
    if (!(blas_ || brgemm_)) return;  // apply() reads weight_ through ATen
    weight_ = at::Tensor();  // read through w_ or packed_ from here on (no reference kept)
    if (m_ == 0 || k_ == 0 || batch == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (packable_) {
        pack();
        w_ = at::Tensor();
        return;
      }
      panels_ = brgemm_ && transpose && m_ * k_ * int64_t{sizeof(float)} >= kPanelsFromBytes;
      if (panels_) {
        w_ = transposed_in_panels(w, kPanelColumns);  // (H, G) in panels (brgemm.h)
        return;
      }
    }
    if (transpose) w_ = transposed(w);  // (H, G) row-major: column-major (G, H)
  }

  // Whether what the constructor prepares for an (m, k) product depends on the batch:
  // MKL's packed copy of w does; a transposed copy, in panels or not, serves any batch
  // (set_batch()).
  static bool prepares_per_batch(int64_t m, int64_t k) {
    return std::is_same_v<scalar_t, float> && !uses_brgemm<scalar_t>() && packs(m, k);
  }

  // This product, prepared for another batch, for `batch` rows (not one that packed w).
  void set_batch(int64_t batch) {
    TORCH_INTERNAL_ASSERT(!packed_.defined() && !in_place_);
    batch_ = batch;
  }

  // Whether the forward products (transpose) of a call, `batch` rows in each of `steps`
  // steps, with w's rows k long, run in place as row dots of w's rows (row_dots.h), under
  // FUSEDRNN_CPU_GEMM=auto: see kRowDotsRowsUpTo.
  static bool in_place_pays(int64_t batch, int64_t steps, int64_t k) {
    return row_dots_pay(batch, steps, k) && gemm_mode() == "auto";
  }

  // The forward product of `batch` rows of a @ W^T for the rows of W in `rows`, a (blocks, n,
  // K) view of W (its rows contiguous; block j at a stride of its own), read in place: the
  // out columns are block 0's n rows, then block 1's, and so on. Nothing is prepared, so
  // whatever keeps the product keeps W (reads() is true of it).
  static RecurrentProduct in_place(const at::Tensor& rows, int64_t batch) {
    RecurrentProduct product;
    product.in_place_.emplace(rows, batch);
    return product;
  }

  // Whether apply() reads w's own memory (no copy made of it): whatever keeps this product
  // keeps w.
  bool reads(const at::Tensor& w) const {
    return (weight_.defined() && weight_.is_alias_of(w)) ||
           (w_.defined() && w_.is_alias_of(w)) || (in_place_ && in_place_->reads(w));
  }

  // out (batch, m) = a (batch, k) @ op(w); both contiguous.
  void apply(scalar_t* out, const scalar_t* a) const {
    if (in_place_) {
      in_place_->apply(out, a);
      return;
    }
    const int64_t batch = batch_;
    if (batch == 0 || m_ == 0) return;
    if (k_ == 0) {
      std::fill(out, out + batch * m_, scalar_t(0));
      return;
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (brgemm_) {
        apply_brgemm(out, a);
        return;
      }
    }
    if (!blas_) {
      const auto options = weight_.options();
      at::Tensor out_t = at::from_blob(out, {batch, m_}, options);
      at::mm_out(out_t, at::from_blob(const_cast<scalar_t*>(a), {batch, k_}, options),
                 transpose_ ? weight_.t() : weight_);
      return;
    }
    const int m = static_cast<int>(m_), n = static_cast<int>(batch), k = static_cast<int>(k_);
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (packable_) {
        cblas_sgemm_compute(kColMajor, kPacked, kNoTrans, m, n, k, packed_.data_ptr<float>(), m,
                            a, k, 0.0f, out, m);
        return;
      }
    }
    blas_gemm(m, n, k, w_.data_ptr<scalar_t>(), static_cast<int>(ld_), a, k, out, m);
  }

 private:
  RecurrentProduct() = default;

  void apply_brgemm(float* out, const float* a) const {
    const float* b = w_.data_ptr<float>();
    if (panels_) {
      for_column_blocks(
          batch_, m_, k_,
          [&](int64_t n0, int64_t n) { brgemm_panels(batch_, n0, n, k_, a, k_, b, m_, out, m_); },
          kPanelColumns);
      return;
    }
    for_column_blocks(batch_, m_, k_, [&](int64_t n0, int64_t n) {
      brgemm_tiled(batch_, n, k_, a, k_, b + n0, ld_, out + n0, m_, /*add=*/false);
    });
  }

  // Whether an (m, k) product packs w for MKL where brgemm does not take it.
  static bool packs(int64_t m, int64_t k) {
    return (gemm_mode() == "auto" || gemm_mode() == "mkl") && cblas_sgemm_pack &&
           cblas_sgemm_compute && m * k >= kPackFrom;
  }

  void pack() {
    const int m = static_cast<int>(m_), k = static_cast<int>(k_), batch = static_cast<int>(batch_);
    const size_t bytes = cblas_sgemm_pack_get_size(kAMatrix, m, batch, k);
    packed_ = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))},
                        w_.options());
    // w (G, H) row-major is column-major (H, G) with leading dimension its row stride.
    cblas_sgemm_pack(kColMajor, kAMatrix, transpose_ ? kTrans : kNoTrans, m, batch, k, 1.0f,
                     w_.data_ptr<float>(), static_cast<int>(w_.stride(0)),
                     packed_.data_ptr<float>());
  }

  at::Tensor weight_;  // w as given, on the ATen path only
  at::Tensor w_;       // w in the layout gemm and brgemm read: w, or its transposed copy
                       // (on brgemm in panels; none where packed_ holds it)
  bool transpose_ = true;
  int64_t batch_ = 0, m_ = 0, k_ = 0;
  int64_t ld_ = 0;  // the leading dimension of w_ as gemm and brgemm read it
  bool blas_ = false, brgemm_ = false, packable_ = false;
  bool panels_ = false;  // w_ is w^T in panels (brgemm.h)
  std::optional<InPlaceRows<scalar_t, scalar_t>> in_place_;  // the row dots, where in place
  at::Tensor packed_;
};

}  // namespace fusedrnn::cpu
