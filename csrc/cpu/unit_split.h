// Splitting one time step across threads by hidden units. Each thread owns a contiguous
// chunk of the hidden units: it runs the recurrent product for its units' rows of W_hh (a
// single-threaded GEMM on a slice of the weights that stays in its core's cache) and the
// cell for those units, and the threads meet once per step, when h is complete. That is
// one barrier per step, where a multi-threaded GEMM followed by a parallel pointwise pass
// pays two fork-joins. Measured on the 2-core AVX-512 Xeon, LSTM forward us per step:
// batch 8 x hidden 128, 11.6 -> 9.9; 16 x 128, 21.5 -> 18.8; but 32 x 256, 85 -> 97, where
// MKL's own two-thread packed GEMM on the whole W_hh wins: steps of 2^22 multiply-adds or
// more keep that, unless float32 products run on brgemm (brgemm.h), whose per-thread
// products are as fast as a whole one (bfloat16 ones keep the bound: lstm_bf16_cpu.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "blas.h"
#include "rows.h"

// MKL's per-thread thread count (weak: absent from a torch without MKL).
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

namespace fusedrnn::cpu {

class UnitSplit {
 public:
  // Split a step whose product has from kSplitFrom up to kSplitUntil multiply-adds (no upper
  // bound for float32 on brgemm): below, one thread (a barrier costs about a microsecond; at
  // batch 1, hidden 64 the whole step takes two); above, one product on all threads.
  static constexpr int64_t kSplitFrom = 1 << 18, kSplitUntil = 1 << 22;
  static constexpr int64_t kMinUnits = 32;  // per thread
  static constexpr int64_t kAlign = 16;     // units per chunk: a multiple of the vector width

  // batch rows, `gates` gate blocks of `hidden` units each, and H = hidden inputs to the
  // recurrent product, whose tensors are of `dtype`; `allowed`: false keeps the step on one
  // thread.
  UnitSplit(int64_t batch, int64_t gates, int64_t hidden, at::ScalarType dtype,
            bool allowed = true)
      : hidden_(hidden) {
    int64_t wanted = 1;
    const int64_t work = batch * gates * hidden * hidden;
    const bool below_until = work < kSplitUntil || uses_brgemm(dtype);
    if (allowed && !at::in_parallel_region() && work >= kSplitFrom && below_until) {
      wanted = std::clamp<int64_t>(hidden / kMinUnits, 1, at::get_num_threads());
    }
    chunk = (hidden + wanted - 1) / wanted;
    chunk = (chunk + kAlign - 1) / kAlign * kAlign;
    parts = chunk == 0 ? 1 : (hidden + chunk - 1) / chunk;
  }

  int64_t begin(int64_t p) const { return std::min(p * chunk, hidden_); }
  int64_t end(int64_t p) const { return std::min((p + 1) * chunk, hidden_); }

  // For each part, the rows of w (gates * H, K) that produce its units, gate by gate:
  // (gates * n, K). One part: w itself.
  std::vector<at::Tensor> gate_rows(const at::Tensor& w, int64_t gates) const {
    if (parts == 1) return {w};
    std::vector<at::Tensor> out;
    for (int64_t p = 0; p < parts; ++p) {
      std::vector<at::Tensor> rows;
      for (int64_t g = 0; g < gates; ++g) {
        rows.push_back(w.narrow(0, g * hidden_ + begin(p), end(p) - begin(p)));
      }
      out.push_back(at::cat(rows, 0).contiguous());
    }
    return out;
  }

  // For each part, the columns of w (G, H) for its units: (G, n). One part: w itself.
  std::vector<at::Tensor> columns(const at::Tensor& w) const {
    if (parts == 1) return {w};
    std::vector<at::Tensor> out;
    for (int64_t p = 0; p < parts; ++p) {
      out.push_back(w.narrow(1, begin(p), end(p) - begin(p)).contiguous());
    }
    return out;
  }

  // fn(first, stride) on every thread of a team (one thread when `parts` is 1): the thread
  // handles parts first, first + stride, ... and calls barrier() after each step.
  template <typename Fn>
  void run(const Fn& fn) const {
    if (parts == 1) {
      fn(int64_t{0}, int64_t{1});
      return;
    }
#pragma omp parallel num_threads(static_cast<int>(parts))
    {
      // Each thread's product runs on that thread alone: MKL would otherwise start its
      // own threads inside ours.
      const int previous = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
      fn(static_cast<int64_t>(omp_get_thread_num()), static_cast<int64_t>(omp_get_num_threads()));
      if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
    }
  }

  // fn(begin, end) over the rows of one part's step: split over torch's threads (rows.h)
  // when the step is not split by units, else on the calling thread.
  template <typename Fn>
  void for_rows(int64_t batch, int64_t width, const Fn& fn) const {
    if (parts == 1) {
      cpu::for_rows(batch, width, fn);
    } else {
      fn(int64_t{0}, batch);
    }
  }

  void barrier() const {
    if (parts > 1) {
#pragma omp barrier
    }
  }

  int64_t parts = 1, chunk = 0;

 private:
  int64_t hidden_;
};

}  // namespace fusedrnn::cpu
