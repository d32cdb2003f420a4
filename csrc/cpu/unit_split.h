// Splitting one time step across threads by hidden units. Each thread owns a contiguous
// chunk of the hidden units: it runs the recurrent product for its units' rows of W_hh (a
// single-threaded GEMM on a slice of the weights that stays in its core's cache) and the
// cell for those units, and the threads meet once per step, when h is complete. That is
// one barrier per step, where a multi-threaded GEMM followed by a parallel pointwise pass
// pays two fork-joins. Measured on the 2-core AVX-512 Xeon, LSTM forward us per step:
// batch 8 x hidden 128, 11.6 -> 9.9; 16 x 128, 21.5 -> 18.8; but 32 x 256, 85 -> 97, where
// MKL's own two-thread packed GEMM on the whole W_hh wins. On the 2-core AMD EPYC (products
// on brgemm), forward op, split against not (one build, alternated processes), float32:
// LSTM 0.84 at 8 x 128, 0.88 at 16 x 256 (2^22 multiply-adds), 0.99 at 32 x 256, 1.03 at
// 64 x 512; GRU 0.82-0.92 up to 2^20, 1.05 at 32 x 256; RNN 0.80-0.91 up to 32 x 256, 1.07 at
// 64 x 512; bfloat16 GRU 0.75-0.88, RNN 0.65-0.79. Above 2^22 the product runs on all
// threads, then the rows: there a step has rows enough for every thread. The float32 LSTM
// on brgemm splits up to 2^23: its module's inference at 32 x 256 took 4.5% longer unsplit
// (14.68 against 14.04 ms, best of 10 alternated processes), at 64 x 512 1% less.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#include "blas.h"
#include "prepared_cache.h"
#include "mkl_threads.h"
#include "rows.h"

namespace fusedrnn::cpu {

class UnitSplit {
 public:
  // Split a step whose product has from kSplitFrom to kSplitUpTo multiply-adds: below, one
  // thread (a barrier costs about a microsecond; at batch 1, hidden 64 the whole step takes
  // two); above, one product on all threads.
  static constexpr int64_t kSplitFrom = 1 << 18, kSplitUpTo = 1 << 22;
  static constexpr int64_t kLstmBrgemmUpTo = 1 << 23;
  static constexpr int64_t kMinUnits = 32;  // per thread
  static constexpr int64_t kAlign = 16;     // units per chunk: a multiple of the vector width

  // batch rows, `gates` gate blocks of `hidden` units each, and H = hidden inputs to the
  // recurrent product; `allowed`: false keeps the step on one thread; split up to `up_to`
  // multiply-adds.
  UnitSplit(int64_t batch, int64_t gates, int64_t hidden, bool allowed = true,
            int64_t up_to = kSplitUpTo)
      : hidden_(hidden) {
    int64_t wanted = 1;
    const int64_t work = batch * gates * hidden * hidden;
    if (allowed && !at::in_parallel_region() && work >= kSplitFrom && work <= up_to) {
      wanted = std::clamp<int64_t>(hidden / kMinUnits, 1, at::get_num_threads());
    }
    chunk = (hidden + wanted - 1) / wanted;
    chunk = (chunk + kAlign - 1) / kAlign * kAlign;
    parts = chunk == 0 ? 1 : (hidden + chunk - 1) / chunk;
  }

  // The bound of the LSTM's float32 and float64 loops (products of `dtype`).
  static int64_t lstm_up_to(at::ScalarType dtype) {
    return uses_brgemm(dtype) ? kLstmBrgemmUpTo : kSplitUpTo;
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

  // Part p's rows of w (gates * H, K), as gate_rows() orders them, in place: a (gates, n, K)
  // view of w.
  at::Tensor gate_row_view(const at::Tensor& w, int64_t gates, int64_t p) const {
    if (parts == 1) return w.view({gates, w.size(0) / gates, w.size(1)});
    return w.view({gates, hidden_, w.size(1)}).narrow(1, begin(p), end(p) - begin(p));
  }

  // For each part, the columns of w (G, H) for its units: (G, n), a view of w (its rows at
  // w's stride). One part: w itself.
  std::vector<at::Tensor> column_blocks(const at::Tensor& w) const {
    if (parts == 1) return {w};
    std::vector<at::Tensor> out;
    for (int64_t p = 0; p < parts; ++p) out.push_back(w.narrow(1, begin(p), end(p) - begin(p)));
    return out;
  }

  // The same, each block copied contiguous.
  std::vector<at::Tensor> columns(const at::Tensor& w) const {
    std::vector<at::Tensor> out = column_blocks(w);
    for (at::Tensor& block : out) block = block.contiguous();
    return out;
  }

  // fn(first, stride) on every thread of a team (one thread when `parts` is 1): the thread
  // handles parts first, first + stride, ... of each step, running the time loop through
  // steps() (each step's work through step()). An exception from a team's thread is raised
  // here once every thread has left fn; fn's code outside the steps may throw only after the
  // last one (the others would wait for it at a barrier).
  template <typename Fn>
  void run(const Fn& fn) const {
    if (parts == 1) {
      fn(int64_t{0}, int64_t{1});
      return;
    }
    failed_step_.store(kNoFailure);
    error_ = nullptr;
    // The caller's ATen thread-local state on every thread of the team, as at::parallel_for
    // gives its threads: grad mode, and the dispatch keys the op's kernel runs below (an
    // ATen call of the aten product path on a column block of W_hh, a view of a tensor that
    // requires a gradient, would otherwise meet autograd there).
    const at::ThreadLocalState state;
#pragma omp parallel num_threads(static_cast<int>(parts))
    {
      const at::ThreadLocalStateGuard guard(state);
      // Each thread's product runs on that thread alone: MKL would otherwise start its
      // own threads inside ours.
      const MklOnThisThread alone;
      try {
        fn(static_cast<int64_t>(omp_get_thread_num()),
           static_cast<int64_t>(omp_get_num_threads()));
      } catch (...) {
        fail(kNoFailure - 1);
      }
    }
    if (error_) std::rethrow_exception(error_);
  }

  // Inside fn of run(): work() for this thread's parts of step k (k counts 0, 1, ...), then
  // the barrier where the threads meet; whether to go on to step k + 1. An exception in
  // work() on any thread makes step(k) false on every thread after that barrier (an
  // exception may not leave an OpenMP thread: it would end the process); each then leaves
  // fn, and run() raises the exception.
  template <typename Work>
  [[nodiscard]] bool step(int64_t k, const Work& work) const {
    if (parts == 1) {
      work();
      return true;
    }
    try {
      work();
    } catch (...) {
      fail(k);
    }
#pragma omp barrier
    // Set before this barrier by a thread failing in step k, or earlier: the same answer on
    // every thread (a failure in step k + 1 comes after the barrier).
    return failed_step_.load(std::memory_order_acquire) > k;
  }

  struct NoAfter {  // steps()'s default after(k): nothing
    void operator()(int64_t) const {}
  };

  // Inside fn of run(): the time loop. For k = 0, 1, ... over `order` (the steps t in the
  // order they are processed), step(k, work(k, order[k])), then after(k) on every thread
  // once the team has met. False as soon as a step failed (every thread at the same k):
  // fn's code after the loop should then return.
  template <typename Work, typename After = NoAfter>
  bool steps(const std::vector<int64_t>& order, const Work& work,
             const After& after = NoAfter{}) const {
    for (size_t k = 0; k < order.size(); ++k) {
      const auto step_k = static_cast<int64_t>(k);
      if (!step(step_k, [&] { work(step_k, order[k]); })) return false;
      after(step_k);
    }
    return true;
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

  // Per-thread scratch of `width` elements per unit of a chunk, one row for every thread
  // that may run a part's rows: the team's, or torch's where one part's rows run on them.
  at::Tensor thread_scratch(int64_t width, const at::TensorOptions& options) const {
    return at::empty({std::max<int64_t>(parts, at::get_num_threads()), width * chunk}, options);
  }

  // The calling thread's row of thread_scratch, inside fn(first, stride) of run().
  int64_t thread(int64_t first) const { return parts > 1 ? first : at::get_thread_num(); }

  int64_t parts = 1, chunk = 0;

 private:

  static constexpr int64_t kNoFailure = std::numeric_limits<int64_t>::max();

  // Keeps the first exception and the earliest step that failed (inside a catch block).
  void fail(int64_t k) const {
#pragma omp critical(fusedrnn_unit_split)
    if (!error_) error_ = std::current_exception();
    int64_t seen = failed_step_.load();
    while (k < seen && !failed_step_.compare_exchange_weak(seen, k)) {
    }
  }

  int64_t hidden_;
  mutable std::atomic<int64_t> failed_step_{kNoFailure};
  mutable std::exception_ptr error_;
};

// One product per part of the weights (gate_rows or columns of a UnitSplit): Product is
// RecurrentProduct<scalar_t> or Bf16Product, each built as Product(weight, transpose, batch).
template <typename Product>
std::vector<Product> part_products(const std::vector<at::Tensor>& weights, bool transpose,
                                   int64_t batch) {
  std::vector<Product> products;
  for (const at::Tensor& weight : weights) products.emplace_back(weight, transpose, batch);
  return products;
}

// The forward's products for `batch` rows in each of `steps` steps: one per part of `split`,
// of its gate rows of w_hh (gates blocks of H rows), read in place where that pays
// (RecurrentProduct::in_place_pays), else from an earlier call's where w_hh is unchanged
// (prepared_cache.h). A training
// loop's optimizer changes the weights between its calls, which then make them anew (after
// a weight's first call at a version, which only marks it).
template <typename Product>
std::vector<Product> gate_row_products(const UnitSplit& split, const at::Tensor& w_hh,
                                       int64_t gates, int64_t batch, int64_t steps) {
  if (Product::in_place_pays(batch, steps, w_hh.size(1))) {  // nothing prepared, nothing kept
    std::vector<Product> products;
    for (int64_t p = 0; p < split.parts; ++p) {
      products.push_back(Product::in_place(split.gate_row_view(w_hh, gates, p), batch));
    }
    return products;
  }
  const auto make = [&](const at::Tensor& w) {
    return part_products<Product>(split.gate_rows(w, gates), /*transpose=*/true, batch);
  };
  // What is prepared serves every batch size but where MKL packs W_hh for one: a server's
  // calls at varying batch sizes kept a copy of W_hh per size (a 52 MiB model took 1.3 GiB).
  const bool per_batch = Product::prepares_per_batch(gates * split.chunk, w_hh.size(1)) ||
                         batch > std::numeric_limits<int>::max();
  const std::string layout = "gate rows " + std::to_string(gates) + " parts " +
                             std::to_string(split.parts) + " chunk " +
                             std::to_string(split.chunk) + " batch " +
                             (per_batch ? std::to_string(batch) : std::string("any"));
  const auto reads = [](const std::vector<Product>& products, const at::Tensor& w) {
    return std::any_of(products.begin(), products.end(),
                       [&](const Product& product) { return product.reads(w); });
  };
  std::vector<Product> products =
      PreparedCache<std::vector<Product>>::get(w_hh, layout, make, reads);
  if (!per_batch) {
    for (Product& product : products) product.set_batch(batch);
  }
  return products;
}

}  // namespace fusedrnn::cpu
