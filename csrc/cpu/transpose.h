// Transposed copies of weights, made once per call where a product needs w^T row-major
// (brgemm reads its fixed operand that way: blas.h, input_projection.cpp). Torch's own copy of
// a transposed view strides through memory: 210 us for a 256 x 512 float32 block, 186 us for
// 128 x 1024, on the 2-core AMD EPYC, about 4% of an LSTM module call at batch 32, hidden 256.
// This one copies 32 x 32 blocks, each read and written within a few cache lines.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fusedrnn::cpu {

namespace detail {

// out (k, m) = in (m, k)^T, both row-major, for the rows [i0, i1) of in.
template <typename T>
void transpose_rows(const T* in, T* out, int64_t m, int64_t k, int64_t i0, int64_t i1) {
  constexpr int64_t kBlock = 32;
  for (int64_t ib = i0; ib < i1; ib += kBlock) {
    const int64_t ie = std::min(ib + kBlock, i1);
    for (int64_t jb = 0; jb < k; jb += kBlock) {
      const int64_t je = std::min(jb + kBlock, k);
      for (int64_t j = jb; j < je; ++j) {
        for (int64_t i = ib; i < ie; ++i) out[j * m + i] = in[i * k + j];
      }
    }
  }
}

}  // namespace detail

// w (m, k), any strides: a new contiguous (k, m) tensor holding w^T.
inline at::Tensor transposed(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "fusedrnn cpu backend: transposed() takes a 2-D tensor");
  const at::Tensor in = w.contiguous();
  const int64_t m = in.size(0), k = in.size(1);
  at::Tensor out = at::empty({k, m}, in.options());
  const auto run = [&](auto bits) {
    using T = decltype(bits);
    const T* src = static_cast<const T*>(in.const_data_ptr());
    T* dst = static_cast<T*>(out.data_ptr());
    at::parallel_for(0, m, std::max<int64_t>(32, (1 << 16) / std::max<int64_t>(k, 1)),
                     [&](int64_t i0, int64_t i1) { detail::transpose_rows(src, dst, m, k, i0, i1); });
  };
  switch (in.element_size()) {
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default: TORCH_CHECK(false, "fusedrnn cpu backend: transposed() of ", in.scalar_type());
  }
  return out;
}

// w (m, k) of 4-byte elements (float32; bfloat16 pairs viewed as int32), any strides: w^T
// (k, m) in panels of `columns` columns, a new (m * k) tensor of w's dtype: panel j holds
// the columns [columns j, columns j + w_j) of w^T's k rows contiguously (row stride w_j:
// `columns` but for the last panel), from element columns j k (the layout brgemm_panels
// reads, brgemm.h).
inline at::Tensor transposed_in_panels(const at::Tensor& w, int64_t columns) {
  TORCH_CHECK(w.dim() == 2 && w.element_size() == 4,
              "fusedrnn cpu backend: transposed_in_panels() takes a 2-D tensor of 4-byte elements");
  const at::Tensor in = w.contiguous();
  const int64_t m = in.size(0), k = in.size(1);
  at::Tensor out = at::empty({m * k}, in.options());
  const auto* src = static_cast<const uint32_t*>(in.const_data_ptr());
  auto* dst = static_cast<uint32_t*>(out.data_ptr());
  at::parallel_for(0, (m + columns - 1) / columns, 1, [&](int64_t first, int64_t last) {
    for (int64_t panel = first; panel < last; ++panel) {
      const int64_t j = panel * columns, width = std::min(columns, m - j);
      detail::transpose_rows(src + j * k, dst + j * k, width, k, 0, width);
    }
  });
  return out;
}

}  // namespace fusedrnn::cpu
