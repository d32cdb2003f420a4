// The gradients of a backward that are products over all steps: of the input
// (dgates_in @ W_ih), of W_ih (dgates_in^T x), of W_hh (dgates_hid^T h_prev) and of the
// biases (column sums of dgates_in and dgates_hid), computed by the CPU kernels while their
// time loop still runs.
//
// A backward time loop at small batch is bound by the latency of its steps: a second thread
// barely shortens it (LSTM, batch 8, hidden 128, 200 steps: 1.86 ms on two threads, 1.67 on
// one, on the 2-core AVX-512 Xeon), while the products above are as much work again and run
// at full speed on any thread. So the time loop runs on one thread, and the other threads
// take chunks of steps as soon as the loop has finished them; when the loop ends, its thread
// joins them for the chunks left. Steps of 2^22 multiply-adds or more (the loop's own product
// then runs best on all threads; the LSTM's on brgemm from 2^25), a single thread, or too few
// steps for two chunks: the loop runs first, then the products: on MKL over all steps at
// once, on every thread; on brgemm (float32 on non-Intel x86, blas.h) the same chunks, each
// on one thread of a team, as brgemm runs best on blocks (brgemm_tiled). On the 2-core AMD
// EPYC (Zen 5) brgemm ran these products at 2x MKL's rate (one thread, a chunk of 128 rows:
// 170-230 GFLOP/s against 90-110), and module training took 0.64-0.77 of its time at batch
// 8 to 64 (benchmarks/results/epyc-zen5-2core-brgemm-grads-ab).
// Measured there, LSTM backward of one layer, float32, ms, overlapped against loop first
// then the products on both threads: B8 T200 I64 H128 2.9 vs 4.2; B16 T64 I256 H128 3.2
// vs 3.9; B1 T300 I32 H64 0.36 vs 0.87 (there the loop's tiny products also stop running on
// MKL's threads, which made them slower). Chunks of 64 rows were no faster, of 256 slower.
//
// Each chunk adds its weight and bias products into accumulator (chunk mod A), A the number
// of threads, in chunk order, and the A accumulators are summed in a fixed order at the
// end: the result depends on the thread count but not on which thread took which chunk.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "blas.h"
#include "mkl_threads.h"
#include "rows.h"
#include "transpose.h"

namespace fusedrnn::cpu {

// The float32 LSTM's backward on brgemm overlaps its products with its loop below this many
// multiply-adds per step (not 2^22, as on MKL): on the 2-core AMD EPYC (Zen 5), module
// training against torch.nn's time, overlapped from 2^22 to 2^25 against not, three
// alternated runs: batch 16 / hidden 256 1.03-1.06 against 1.11-1.13, 32 / 256 0.71-0.77
// against 0.77-0.80; 64 / 512 (2^26) the same either way.
constexpr int64_t kLstmOverlapOnBrgemmBelow = int64_t{1} << 25;

// Wait, spinning briefly and then yielding the core, until `done()`.
template <typename Pred>
void spin_until(const Pred& done) {
  for (int spins = 0; !done(); ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// The sources of the products, for T steps of B rows. x (T,B,I) and w_ih (G,I): the
// input; dgates_in, dgates_hid (T,B,G): written by the time loop (the same tensor where the
// input-side and hidden-side pre-activations share their gradient). The state each step
// started from is `states[t]` (T,B,H) itself, or, with `shifted`, the output `states` of
// the step before t in the forward's order, `h0` (B,H) for a row's first step (t = 0
// forward; reverse: T-1, or lengths[b]-1; outputs past a row's length are zero, so those
// terms vanish). `reverse` is the forward's direction; lengths may be null. With an LSTM
// projection, proj_grad (T,B,P) and proj_input (T,B,H), else undefined: the W_hr gradient
// is proj_grad^T proj_input over all steps.
struct GradSources {
  at::Tensor x, w_ih, dgates_in, dgates_hid, states, h0;
  bool shifted = false, reverse = false, has_bias = false;
  const int64_t* lengths = nullptr;
  at::Tensor proj_grad, proj_input;
};

template <typename scalar_t>
class InputWeightGrads {
 public:
  static constexpr int64_t kChunkRows = 128;  // rows (steps x batch) per chunk, at least
  static constexpr int64_t kMinChunks = 8;    // steps allowing
  static constexpr int kMaxThreads = 4;       // the loop's and three for the chunks

  // `overlap`: the caller's time loop runs on one thread no slower than on several.
  InputWeightGrads(GradSources src, bool overlap) : src_(std::move(src)) {
    steps_ = src_.dgates_in.size(0);
    batch_ = src_.dgates_in.size(1);
    gates_ = src_.dgates_in.size(2);
    inputs_ = src_.x.size(2);
    state_size_ = src_.states.size(2);
    const int64_t wanted = std::max<int64_t>(1, (kChunkRows + batch_ - 1) / std::max<int64_t>(batch_, 1));
    chunk_steps_ = std::max<int64_t>(1, std::min(wanted, (steps_ + kMinChunks - 1) / kMinChunks));
    const int threads = at::in_parallel_region() ? 1 : std::min(at::get_num_threads(), kMaxThreads);
    overlapped_ = overlap && threads >= 2 && batch_ > 0 && steps_ >= 2 * chunk_steps_;
    // On MKL, one product over all steps after the loop, on MKL's threads; on brgemm the same
    // chunks after the loop, each on one thread of a team.
    if (!overlapped_ && !brgemm_) chunk_steps_ = std::max<int64_t>(steps_, 1);
    chunks_ = steps_ == 0 ? 0 : (steps_ + chunk_steps_ - 1) / chunk_steps_;
    // Overlapped: the loop's thread and one per chunk at most; on brgemm after the loop, one
    // per chunk; on MKL, the calling thread.
    const int64_t wanted_team = overlapped_ ? chunks_ + 1 : (brgemm_ ? chunks_ : 1);
    team_ = static_cast<int>(std::clamp<int64_t>(wanted_team, 1, threads));
    slots_ = static_cast<int>(std::min<int64_t>(team_, std::max<int64_t>(chunks_, 1)));
    grad_x = at::empty_like(src_.x);
    transposed_w_ih_ = accumulates_transposed(gates_, inputs_);
    transposed_w_hh_ = accumulates_transposed(gates_, state_size_);
    acc_w_ih_ = weight_accumulators(gates_, inputs_, transposed_w_ih_);
    acc_w_hh_ = weight_accumulators(gates_, state_size_, transposed_w_hh_);
    const bool shared = src_.dgates_hid.is_same(src_.dgates_in);
    // The biases' in float64 whatever the dtype (see bias_sum).
    acc_b_in_ = accumulators({src_.has_bias ? gates_ : 0}, at::kDouble);
    has_b_hid_ = src_.has_bias && !shared;
    acc_b_hid_ = accumulators({has_b_hid_ ? gates_ : 0}, at::kDouble);
    if (src_.proj_grad.defined()) {
      const int64_t rows = src_.proj_grad.size(2), width = src_.proj_input.size(2);
      transposed_w_hr_ = accumulates_transposed(rows, width);
      acc_w_hr_ = weight_accumulators(rows, width, transposed_w_hr_);
    }
    w_hh_unwritten_.assign(slots_, 0);
    slot_next_ = std::make_unique<std::atomic<int64_t>[]>(slots_);
    for (int s = 0; s < slots_; ++s) slot_next_[s].store(s);
  }

  bool overlapped() const { return overlapped_; }

  // Run `loop()`, the time loop, which calls step_done(k) once the dgates of its k-th
  // processed step (in the backward's order, from 0) are written, and the products.
  template <typename Loop>
  void run(const Loop& loop) {
    // Not overlapped: the loop first, then the chunks (on a team where there is one). An
    // overlapped run always has a team: thread 0 runs the loop, the others the chunks.
    if (!overlapped_) {
      loop();
      finished_steps_.store(steps_);
    }
    if (team_ == 1) {
      TORCH_INTERNAL_ASSERT(!overlapped_);
      work();
    } else {
      std::exception_ptr error;
      const at::ThreadLocalState state;  // the caller's, on every thread (UnitSplit::run)
#pragma omp parallel num_threads(team_)
      {
        const at::ThreadLocalStateGuard guard(state);
        // Every product on the thread that calls it: MKL would otherwise start threads
        // inside ours.
        const MklOnThisThread alone;
        // An exception may not leave the parallel region: the first one is kept, and the
        // flag stops every wait, for rethrowing after it.
        try {
          if (overlapped_ && omp_get_thread_num() == 0) loop();
          work();
        } catch (...) {
#pragma omp critical(fusedrnn_input_weight_grads)
          if (!error) error = std::current_exception();
          failed_.store(true, std::memory_order_release);
        }
      }
      if (error) std::rethrow_exception(error);
    }
    finish();
  }

  void step_done(int64_t k) {
    if (overlapped_) finished_steps_.store(k + 1, std::memory_order_release);
  }

  at::Tensor grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr;

 private:
  // The steps [first, last) of chunk c: the backward processes steps from T-1 down (forward
  // direction) or from 0 up (reverse).
  void chunk_steps(int64_t c, int64_t& first, int64_t& last) const {
    const int64_t k0 = c * chunk_steps_, k1 = std::min(steps_, k0 + chunk_steps_);
    first = src_.reverse ? k0 : steps_ - k1;
    last = src_.reverse ? k1 : steps_ - k0;
  }

  bool failed() const { return failed_.load(std::memory_order_acquire); }

  void work() {
    for (int64_t c = next_chunk_.fetch_add(1); c < chunks_; c = next_chunk_.fetch_add(1)) {
      const int64_t needed = std::min(steps_, (c + 1) * chunk_steps_);
      spin_until([&] {
        return failed() || finished_steps_.load(std::memory_order_acquire) >= needed;
      });
      if (failed()) return;
      int64_t first, last;
      chunk_steps(c, first, last);
      input_grad(first, last);
      const int slot = static_cast<int>(c % slots_);
      spin_until([&] { return failed() || slot_next_[slot].load(std::memory_order_acquire) == c; });
      if (failed()) return;
      accumulate(slot, c < slots_ ? scalar_t(0) : scalar_t(1), first, last);
      slot_next_[slot].store(c + slots_, std::memory_order_release);
    }
  }

  // One accumulator of `sizes` per slot: (slots, *sizes), or `sizes` alone for one slot,
  // which is then the gradient itself (a sum over one slot would be a copy of it, on torch's
  // threads: most of a one-step backward at batch 1).
  at::Tensor accumulators(std::vector<int64_t> sizes,
                          at::ScalarType dtype = at::ScalarType::Undefined) const {
    if (slots_ > 1) sizes.insert(sizes.begin(), slots_);
    const auto options = src_.dgates_in.options();
    return at::empty(sizes, dtype == at::ScalarType::Undefined ? options : options.dtype(dtype));
  }

  // Whether a weight's (rows, width) gradient accumulates transposed, as (width, rows), on
  // brgemm (see weight_product): where the narrower operand's transpositions save more than
  // the one of the result costs. Per row of the product, transposed, `width` elements are
  // moved instead of `rows`; the result's transposition moves rows x width once, at about
  // half the cost per element (a fresh tensor, on torch's threads). On the 2-core AMD EPYC
  // (Zen 5), LSTM training (input and hidden 512, one layer), batch x steps of 1 to 256
  // rows: 0.21-0.96 of the time of the transposed form (batch 8, one step: 1.4 ms against
  // 6.6); at 512 rows the transposed form was 4-7% faster
  // (benchmarks/results/epyc-zen5-2core-small-weight-grads-ab).
  bool accumulates_transposed(int64_t rows, int64_t width) const {
    return brgemm_ && 2 * steps_ * batch_ * (rows - width) > rows * width;
  }

  // A bias's gradient (G) from its float64 accumulators: the slots' sums added in slot
  // order, rounded once (a plain loop: at batch 1, one step, ATen's sum and conversion
  // would cost more than the sums).
  at::Tensor bias_gradient(const at::Tensor& acc) const {
    at::Tensor grad = at::empty({gates_}, src_.dgates_in.options());
    const double* sums = acc.data_ptr<double>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    for (int64_t g = 0; g < gates_; ++g) {
      double total = 0.0;
      for (int slot = 0; slot < slots_; ++slot) total += sums[slot * gates_ + g];
      out[g] = static_cast<scalar_t>(total);
    }
    return grad;
  }

  at::Tensor weight_accumulators(int64_t rows, int64_t width, bool transposed) const {
    return transposed ? accumulators({width, rows}) : accumulators({rows, width});
  }

  at::Tensor slots_summed(const at::Tensor& acc) const { return slots_ > 1 ? acc.sum(0) : acc; }

  at::Tensor weight_summed(const at::Tensor& acc, bool transposed_acc) const {
    return transposed_acc ? transposed(slots_summed(acc)) : slots_summed(acc);
  }

  const scalar_t* step_ptr(const at::Tensor& t, int64_t step) const {
    return t.data_ptr<scalar_t>() + step * batch_ * t.size(2);
  }

  // grad_x[first:last] = dgates_in[first:last] @ w_ih.
  void input_grad(int64_t first, int64_t last) {
    const int64_t rows = (last - first) * batch_;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (brgemm_) {
        brgemm_tiled(rows, inputs_, gates_, step_ptr(src_.dgates_in, first), gates_,
                     src_.w_ih.data_ptr<float>(), inputs_,
                     grad_x.data_ptr<float>() + first * batch_ * inputs_, inputs_, false);
        return;
      }
    }
    gemm<scalar_t>(false, false, inputs_, rows, gates_, src_.w_ih.data_ptr<scalar_t>(), inputs_,
                   step_ptr(src_.dgates_in, first), gates_, scalar_t(0),
                   grad_x.data_ptr<scalar_t>() + first * batch_ * inputs_, inputs_);
  }

  // acc (N, K) = beta * acc + dg[first:last]^T @ src[from : from + last - first], dg
  // (T,B,N) and src (T,B,K), K = width. brgemm reads its operands row-major, so one of them
  // is transposed, a block of rows at a time, into this thread's scratch: dg's rows (N wide),
  // or, with `transposed_acc`, src's (K wide, 1 to 8 times narrower) for acc += src^T @ dg
  // with acc (K, N), the transposed gradient, which weight_summed turns once, at the end.
  void weight_product(scalar_t* acc, int64_t width, scalar_t beta, const at::Tensor& dg,
                      int64_t first, int64_t last, const at::Tensor& src, int64_t from,
                      bool transposed_acc) {
    const int64_t rows = dg.size(2);
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (brgemm_) {
        constexpr int64_t kBlockRows = 256;
        const int64_t count = (last - first) * batch_;
        thread_local std::vector<float> scratch;
        const int64_t scratch_rows = std::clamp<int64_t>(count, 1, kBlockRows);
        scratch.resize((transposed_acc ? width : rows) * scratch_rows);
        const float* dgp = step_ptr(dg, first);
        const float* sp = step_ptr(src, from);
        // At least one pass: a chunk of no rows still sets acc to beta * acc.
        for (int64_t r = 0; r < count || r == 0; r += kBlockRows) {
          const int64_t block = std::min(kBlockRows, count - r);
          const bool add = beta != scalar_t(0) || r > 0;
          if (transposed_acc) {
            detail::transpose_rows(sp + r * width, scratch.data(), block, width, 0, block);
            brgemm_tiled(width, rows, block, scratch.data(), block, dgp + r * rows, rows, acc,
                         rows, add);
          } else {
            detail::transpose_rows(dgp + r * rows, scratch.data(), block, rows, 0, block);
            brgemm_tiled(rows, width, block, scratch.data(), block, sp + r * width, width, acc,
                         width, add);
          }
        }
        return;
      }
    }
    gemm<scalar_t>(false, true, width, rows, (last - first) * batch_, step_ptr(src, from),
                   width, step_ptr(dg, first), rows, beta, acc, width);
  }

  // acc (G) = beta * acc + the column sums of dg[first:last]: each block of kBiasBlockRows
  // rows summed in scalar_t, the blocks' sums added in float64. One running float32 sum over
  // every row lost accuracy with the rows (T 4096, batch 2: 10-20x the error of torch's
  // blocked reduction in b_ih's gradient), and so did a running float32 sum of the blocks'
  // sums (T 2000, batch 64, one thread: 12x).
  static constexpr int64_t kBiasBlockRows = 32;
  void bias_sum(double* acc, scalar_t beta, const at::Tensor& dg, int64_t first, int64_t last) {
    if (beta == scalar_t(0)) std::fill(acc, acc + gates_, 0.0);
    const scalar_t* row = step_ptr(dg, first);
    const int64_t rows = (last - first) * batch_;
    std::vector<scalar_t> block(gates_);
    for (int64_t r0 = 0; r0 < rows; r0 += kBiasBlockRows) {
      std::copy(row + r0 * gates_, row + (r0 + 1) * gates_, block.begin());
      for (int64_t r = r0 + 1; r < std::min(rows, r0 + kBiasBlockRows); ++r) {
        add_row<scalar_t>(block.data(), row + r * gates_, gates_);
      }
      for (int64_t g = 0; g < gates_; ++g) acc[g] += static_cast<double>(block[g]);
    }
  }

  void accumulate(int slot, scalar_t beta, int64_t first, int64_t last) {
    weight_product(acc_w_ih_.data_ptr<scalar_t>() + slot * gates_ * inputs_, inputs_, beta,
                   src_.dgates_in, first, last, src_.x, first, transposed_w_ih_);
    scalar_t* w_hh = acc_w_hh_.data_ptr<scalar_t>() + slot * gates_ * state_size_;
    // A slot left unwritten (its chunk had no step with an output before it) is written
    // over by its next product, or zeroed in finish().
    const scalar_t w_hh_beta = w_hh_unwritten_[slot] ? scalar_t(0) : beta;
    w_hh_unwritten_[slot] = 0;
    if (!src_.shifted) {
      weight_product(w_hh, state_size_, w_hh_beta, src_.dgates_hid, first, last, src_.states,
                     first, transposed_w_hh_);
    } else {
      // Steps whose previous state is an output: t >= 1 forward (from y[t - 1]), t <= T-2
      // reverse (from y[t + 1]); the rest is the h0 term of finish().
      const int64_t lo = src_.reverse ? first : std::max<int64_t>(first, 1);
      const int64_t hi = src_.reverse ? std::min(last, steps_ - 1) : last;
      if (lo < hi) {
        weight_product(w_hh, state_size_, w_hh_beta, src_.dgates_hid, lo, hi, src_.states,
                       src_.reverse ? lo + 1 : lo - 1, transposed_w_hh_);
      } else if (w_hh_beta == scalar_t(0)) {
        w_hh_unwritten_[slot] = 1;
      }
    }
    if (acc_w_hr_.defined()) {
      const int64_t width = src_.proj_input.size(2), size = src_.proj_grad.size(2) * width;
      weight_product(acc_w_hr_.data_ptr<scalar_t>() + slot * size, width, beta,
                     src_.proj_grad, first, last, src_.proj_input, first, transposed_w_hr_);
    }
    if (!src_.has_bias) return;
    bias_sum(acc_b_in_.data_ptr<double>() + slot * gates_, beta, src_.dgates_in, first, last);
    if (has_b_hid_) {
      bias_sum(acc_b_hid_.data_ptr<double>() + slot * gates_, beta, src_.dgates_hid, first,
               last);
    }
  }

  void finish() {
    if (chunks_ == 0) {
      for (at::Tensor* acc : {&acc_w_ih_, &acc_w_hh_, &acc_b_in_, &acc_b_hid_, &acc_w_hr_}) {
        if (acc->defined()) acc->zero_();
      }
    }
    // One unwritten slot of one is set by the h0 term below; any other is zeroed.
    const bool h0_term = src_.shifted && chunks_ > 0;
    for (int slot = 0; slot < slots_; ++slot) {
      if (w_hh_unwritten_[slot] && (slots_ > 1 || !h0_term)) {
        scalar_t* w_hh = acc_w_hh_.data_ptr<scalar_t>() + slot * gates_ * state_size_;
        std::fill(w_hh, w_hh + gates_ * state_size_, scalar_t(0));
        w_hh_unwritten_[slot] = 0;
      }
    }
    grad_w_ih = weight_summed(acc_w_ih_, transposed_w_ih_);
    grad_w_hh = weight_summed(acc_w_hh_, transposed_w_hh_);
    grad_w_hr = acc_w_hr_.defined() ? weight_summed(acc_w_hr_, transposed_w_hr_)
                                    : src_.x.new_empty({0});
    if (h0_term) add_initial_state_term(w_hh_unwritten_[0] ? scalar_t(0) : scalar_t(1));
    if (!src_.has_bias) {
      grad_b_ih = src_.x.new_empty({0});  // two tensors: results may not alias
      grad_b_hh = src_.x.new_empty({0});
      return;
    }
    grad_b_ih = bias_gradient(acc_b_in_);
    grad_b_hh = has_b_hid_ ? bias_gradient(acc_b_hid_) : grad_b_ih.clone();
  }

  // grad_w_hh = beta * grad_w_hh + the sum over rows b of dgates_hid[first step of b, b]^T
  // h0[b].
  void add_initial_state_term(scalar_t beta) {
    at::Tensor firsts = at::zeros({batch_, gates_}, src_.dgates_hid.options());
    scalar_t* out = firsts.data_ptr<scalar_t>();
    for (int64_t b = 0; b < batch_; ++b) {
      const int64_t length = src_.lengths == nullptr ? steps_ : src_.lengths[b];
      if (length <= 0) continue;
      const int64_t t = src_.reverse ? std::min(length, steps_) - 1 : 0;
      const scalar_t* row = step_ptr(src_.dgates_hid, t) + b * gates_;
      std::copy(row, row + gates_, out + b * gates_);
    }
    gemm<scalar_t>(false, true, state_size_, gates_, batch_, src_.h0.data_ptr<scalar_t>(), state_size_,
                   out, gates_, beta, grad_w_hh.data_ptr<scalar_t>(), state_size_);
  }

  GradSources src_;
  int64_t steps_, batch_, gates_, inputs_, state_size_;
  int64_t chunk_steps_ = 1, chunks_ = 0;
  bool overlapped_ = false, has_b_hid_ = false;
  // Per weight: its gradient accumulates transposed (accumulates_transposed).
  bool transposed_w_ih_ = false, transposed_w_hh_ = false, transposed_w_hr_ = false;
  const bool brgemm_ = uses_brgemm<scalar_t>();  // products on brgemm (blas.h), else gemm()
  int team_ = 1, slots_ = 1;
  // Per slot: its W_hh accumulator holds nothing yet. One byte each (not vector<bool>'s
  // bits): the threads write different slots' flags at the same time.
  std::vector<char> w_hh_unwritten_;
  at::Tensor acc_w_ih_, acc_w_hh_, acc_b_in_, acc_b_hid_, acc_w_hr_;
  std::unique_ptr<std::atomic<int64_t>[]> slot_next_;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<int64_t> finished_steps_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace fusedrnn::cpu
