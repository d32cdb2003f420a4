// The input projection of the cpu backend, x @ W_ih^T for all steps in one product, into a
// workspace from the pool (workspace_pool.h): the projection lives only until the time loop
// has read it, and fresh pages for it cost time in every call. Measured on the 2-core
// AVX-512 Xeon, LSTM module, best of four rounds, ms, pooled against torch.mm's fresh
// buffer: inference at batch 32, 100 steps, hidden 256, 10.6 vs 11.9; training at batch 8,
// 200 steps, hidden 128, 6.2 vs 6.4. Where the recurrent products run on brgemm (blas.h),
// so does this one: on the 2-core AMD EPYC, ms against MKL, 3200 x 256 @ 256 x 1024 8.1-8.3
// vs 8.5; 6400 x 512 @ 512 x 2048 63.6-64.2 vs 69.3-71.7; 1600 x 768 @ 768 x 3072 38.5-38.8
// vs 38.9-39.1.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../recurrence_args.h"
#include "blas.h"
#include "prepared_cache.h"
#include "recurrence_cpu.h"
#include "transpose.h"
#include "workspace_pool.h"

namespace fusedrnn::cpu {
namespace {

// brgemm from this many rows of x on, MKL below, and from twice as many for each doubling
// of w_ih beyond 2^21 elements. On the 2-core AMD EPYC (Zen 5), ms, MKL against brgemm with
// w_ih transposed in the call (a training loop's case, see transposed_w_ih): inputs 512,
// gates 2048, 32 rows 0.39 vs 0.42, 64 rows 0.69 vs 0.59, 512 rows 4.9 vs 2.7; inputs 1024,
// gates 4096, 64 rows 3.1 vs 3.5, 128 rows 5.6 vs 4.8; inputs 128 to 256, brgemm from 32
// rows. With w_ih^T kept (inference), brgemm took 0.47-0.52 of MKL's time from 64 rows.
// (The 1024 rows before came from the Zen 4 at 49fb197: 100 rows x 256 inputs, 1024 gates,
// brgemm 0.54 against MKL's 0.33 ms.)
constexpr int64_t kBrgemmRowsFrom = 64;

// w_ih^T (I, G), kept while w_ih is unchanged (prepared_cache.h): an inference loop's calls
// transpose it once, a training loop's (whose optimizer changes w_ih) every call.
at::Tensor transposed_w_ih(const at::Tensor& w_ih) {
  return PreparedCache<at::Tensor>::get(
      w_ih, "input projection", [](const at::Tensor& w) { return transposed(w); },
      [](const at::Tensor&, const at::Tensor&) { return false; });
}

// out (R, G) = x (R, I) @ w_ih^T on brgemm: brgemm.h's tiles on torch's threads,
// each written once (MKL's product first clears its output in a pass of its own), reading
// w_ih^T (I, G) from transposed_w_ih; brgemm_tiled sums I in blocks (one call over all
// of I = 1024 ran at 169 GFLOP/s against 223 in blocks of 512, on one core of the Zen 5
// EPYC; 113 against 208 at 2048).
void project_on_brgemm(const at::Tensor& x, const at::Tensor& w_ih, at::Tensor& out) {
  constexpr int64_t kRows = kTileRows, kCols = kTileColumns;
  const int64_t rows = x.size(0), inputs = x.size(1), gates = w_ih.size(0);
  const at::Tensor w_t = transposed_w_ih(w_ih);
  const float* xp = x.data_ptr<float>();
  const float* wp = w_t.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t col_tiles = (gates + kCols - 1) / kCols;
  const int64_t tiles = (rows + kRows - 1) / kRows * col_tiles;
  at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
    for (int64_t tile = first; tile < last; ++tile) {
      const int64_t r0 = tile / col_tiles * kRows, g0 = tile % col_tiles * kCols;
      brgemm_tiled(std::min(kRows, rows - r0), std::min(kCols, gates - g0), inputs,
                   xp + r0 * inputs, inputs, wp + g0, gates, op + r0 * gates + g0, gates,
                   /*add=*/false);
    }
  });
}

}  // namespace

at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih) {
  check_tensor(x, "x", x, 3, at::kCPU);
  check_tensor(w_ih, "w_ih", x, 2, at::kCPU);
  const int64_t steps = x.size(0), batch = x.size(1), inputs = x.size(2);
  const int64_t gates = w_ih.size(0);
  check_shape(w_ih, "w_ih", {gates, inputs}, at::kCPU);
  at::Tensor out = WorkspacePool::empty({steps, batch, gates}, x.options());
  at::Tensor flat = out.view({steps * batch, gates});
  const at::Tensor x_flat = x.view({steps * batch, inputs});
  const int64_t rows = steps * batch;
  const bool row_dots_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  if (row_dots_dtype && rows <= kRowDotsRowsUpTo && gemm_mode() == "auto") {
    // A few rows (a step or a few of a small batch): W_ih's rows read in place (row_dots.h),
    // where ATen's product costs microseconds more at hidden 128, and reads W_ih three
    // times over at 1024 (one row: 0.42 ms against 0.13 on the 2-core AMD EPYC).
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "input_projection_row_dots", [&] {
      InPlaceRows<scalar_t, scalar_t>(w_ih.view({1, gates, inputs}), rows)
          .apply(flat.data_ptr<scalar_t>(), x_flat.const_data_ptr<scalar_t>());
    });
  } else if (x.scalar_type() == at::kBFloat16 && rows <= kRowDotsRowsUpTo &&
             gemm_mode() == "auto" && row_dots_bf16_runs()) {
    // The same in bfloat16 (AVX512-BF16's pairs of products), float32 sums rounded once.
    at::Tensor sums = at::empty({rows, gates}, x.options().dtype(at::kFloat));
    InPlaceRows<uint16_t, float>(w_ih.view({1, gates, inputs}), rows)
        .apply(sums.data_ptr<float>(),
               reinterpret_cast<const uint16_t*>(x_flat.const_data_ptr<at::BFloat16>()));
    flat.copy_(sums);
  } else if (uses_brgemm(x.scalar_type()) && inputs > 0 &&
             rows >= kBrgemmRowsFrom * std::max<int64_t>(1, inputs * gates >> 21)) {
    project_on_brgemm(x_flat, w_ih, flat);
  } else {
    at::mm_out(flat, x_flat, w_ih.t());
  }
  return out;
}

}  // namespace fusedrnn::cpu
