// Memory for the sequence-long workspaces of the CPU kernels (the gates and cells a forward
// keeps for its backward, the backward's pre-activation gradients), kept for reuse.
//
// Each training step allocates them afresh and frees them after the backward; from the
// system allocator that memory comes back as new pages, and touching them cost about a
// microsecond per 4 KiB page: at batch 8, 200 steps, hidden 128 the forward took 3.3 ms in
// a training loop against 1.9 ms when its pages were warm. Blocks freed here stay (up to
// kMaxCachedBytes in all) for a later request of their rounded size or up to half of it: a
// training loop over sequences of varying length asks for a different size every step,
// which an exact match alone never reused (it held 256 MiB of blocks of past sizes). A
// block freed when the cached ones would pass the limit takes the place of the smallest
// ones no larger than itself, or is freed where those do not make room. release_cached()
// frees every cached block (fusedrnn.empty_cache()). Allocations are
// reported to the profiler like torch's own, so memory figures stay true.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

namespace fusedrnn::cpu {

class WorkspacePool final : public c10::Allocator {
 public:
  static constexpr size_t kAlignment = 64;
  static constexpr size_t kGranule = size_t{1} << 16;  // sizes round up to 64 KiB
  static constexpr size_t kMaxCachedBytes = size_t{256} << 20;

  static WorkspacePool& get() {
    static auto* pool = new WorkspacePool();  // never destroyed: tensors may outlive statics
    return *pool;
  }

  // An uninitialised contiguous tensor from the pool.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::detail::empty_generic(sizes, &get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     options.dtype().toScalarType(), std::nullopt);
  }

  c10::DataPtr allocate(size_t bytes) override {
    size_t size = (bytes + kGranule - 1) / kGranule * kGranule;
    void* data = nullptr;
    Totals totals;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // the smallest cached block that holds the request, if it is at most twice its size
      auto it = free_.lower_bound(size);
      if (size > 0 && it != free_.end() && it->first <= 2 * size) {
        data = it->second.back();
        it->second.pop_back();
        size = it->first;
        cached_ -= size;
        if (it->second.empty()) free_.erase(it);
      }
      if (data == nullptr) {
        TORCH_CHECK(posix_memalign(&data, kAlignment, size == 0 ? kAlignment : size) == 0,
                    "fusedrnn cpu backend: out of memory allocating ", size, " bytes");
      }
      in_use_ += size;
      totals = {in_use_, in_use_ + cached_};
    }
    report(data, static_cast<int64_t>(size), totals);
    return {data, new Block{data, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees every cached block (none in use is touched); returns the bytes freed.
  size_t release_cached() {
    std::map<size_t, std::vector<void*>> blocks;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (auto& [size, list] : blocks) {
      for (void* data : list) std::free(data);
    }
    return bytes;
  }

  // (bytes in use, bytes cached for reuse, cached blocks).
  std::tuple<size_t, size_t, size_t> bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t blocks = 0;
    for (const auto& [size, list] : free_) blocks += list.size();
    return {in_use_, cached_, blocks};
  }

 private:
  struct Block {
    void* data;
    size_t size;
  };

  static void release(void* context) {
    auto* block = static_cast<Block*>(context);
    WorkspacePool& pool = get();
    void* const data = block->data;
    Totals totals;
    std::vector<void*> evicted;  // freed after the lock is released
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      pool.in_use_ -= block->size;
      if (block->size != 0 && block->size <= kMaxCachedBytes) {  // none serve a size 0
        // cached blocks no larger than this one make room for it, the smallest first
        while (pool.cached_ + block->size > kMaxCachedBytes &&
               pool.free_.begin()->first <= block->size) {
          auto smallest = pool.free_.begin();
          evicted.push_back(smallest->second.back());
          smallest->second.pop_back();
          pool.cached_ -= smallest->first;
          if (smallest->second.empty()) pool.free_.erase(smallest);
        }
        if (pool.cached_ + block->size <= kMaxCachedBytes) {
          pool.free_[block->size].push_back(block->data);
          pool.cached_ += block->size;
          block->data = nullptr;
        }
      }
      totals = {pool.in_use_, pool.in_use_ + pool.cached_};
    }
    pool.report(data, -static_cast<int64_t>(block->size), totals);
    std::free(block->data);
    for (void* old : evicted) std::free(old);
    delete block;
  }

  // The pool's bytes in use and held (in use + cached), read under the lock.
  struct Totals {
    size_t in_use = 0, held = 0;
  };

  static void report(void* data, int64_t delta, const Totals& totals) {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(data, delta, totals.in_use, totals.held,
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;  // cached blocks by size, each list non-empty
  size_t cached_ = 0, in_use_ = 0;
};

}  // namespace fusedrnn::cpu
