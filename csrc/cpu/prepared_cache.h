// The forward loops' recurrent products, prepared from W_hh (each part's gate rows, copied
// transposed or packed for the BLAS, or paired for the bfloat16 kernel), and W_ih^T for the
// input projection on brgemm (input_projection.cpp), kept from one call to the next while
// the weight is unchanged. The preparation is a fixed cost per call and layer: at
// batch 32, hidden 512 on the 2-core AMD EPYC, 0.7 of an LSTM call's 1.4 ms at one step, so
// calls of a few steps (decoding one step at a time) paid it again and again
// (benchmarks/results/epyc-2core-lstm-inference-breakdown). Calls of one batch row per step
// or of a few rows in all read W_hh in place instead (row_dots.h): nothing is kept for them.
//
// Unchanged means: the same memory (its storage held weakly, at the same address), with the
// same sizes and version, and a checksum of its values equal to that of the copy the
// products were made from. The storage, not the tensor: torch.utils.swap_tensors (module
// conversions and load_state_dict under torch.__future__'s swap_module_params_on_conversion)
// refuses a tensor that anything holds weakly.
// The version counter alone is not enough: an in-place change through `.data`
// (`p.data.uniform_()`) does not bump the parameter's. The checksum reads W_hh once, a
// fraction of the preparation's cost; a call that keeps products also copies W_hh and
// checksums the copy (once per version, or at every call of a loop that changes W_hh
// through `.data`). Entries are kept for the 64 most recently used weights and layouts, at
// most 256 MiB of weights (their prepared copies about as much again), and of those only
// the weights' current versions; a freed weight's go at the next call that looks this cache
// up (one cache per kind of product: the same dtype and path, not a small call that reads
// its weights in place). The kept products hold copies, so the cache keeps no weight alive:
// products that read W_hh in place (one part, on a torch without BLAS or bfloat16 products
// on MKL; a call with no rows), for which nothing was prepared, are not kept.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

namespace fusedrnn::cpu {

// A checksum of a contiguous tensor's bytes: the sum modulo 2^64 of a non-linear mix
// (splitmix64's) of each 64-bit word plus its position (a change to any one word always
// changes it), the tail bytes as one more word. Above 2^16 words, summed over torch's threads.
uint64_t weight_checksum(const at::Tensor& w);
uint64_t bytes_checksum(const void* data, int64_t size);  // the same, of `size` bytes at data

// Cache hits and misses since the process started, the entries that hold products and
// their weights' bytes (for the tests), and emptying the cache.
std::pair<int64_t, int64_t> prepared_cache_counts();
std::pair<int64_t, int64_t> prepared_cache_kept();
void clear_prepared_cache();

namespace detail {

// The counters, and each PreparedCache<Value>'s hooks that empty it and count what it keeps.
void count_prepared(bool hit);
void register_prepared_cache(const std::function<void()>& clear,
                             const std::function<std::pair<int64_t, int64_t>()>& kept);

}  // namespace detail

template <typename Value>
class PreparedCache {
 public:
  static constexpr size_t kEntries = 64;
  static constexpr int64_t kBytes = int64_t{256} << 20;

  // make(w), or the Value it made for an earlier call on w with the same `layout` (the
  // products' own parameters: parts, chunk, the batch where it shapes them, library) while
  // w is unchanged. Products are kept from a weight's second call at one version on: a
  // training loop, whose optimizer bumps the weights' versions before every forward, pays
  // no checksum and keeps nothing. Products to be kept are made from a copy of w, the
  // checksum taken of that copy: another thread's write to w (through .data, at the same
  // version) while they were made would otherwise keep products of other values under the
  // checksum of w's values, served to every later call. A Value that reads its source's
  // memory (`reads(value, source)`: nothing was prepared) is never kept: it would keep that
  // memory alive, for no gain. No tensor's reference count changes under the lock (torch
  // may take the GIL for that).
  static Value get(const at::Tensor& w, const std::string& layout,
                   const std::function<Value(const at::Tensor&)>& make,
                   const std::function<bool(const Value&, const at::Tensor&)>& reads) {
    if (!w.is_contiguous() || w.is_inference() || w.nbytes() > static_cast<size_t>(kBytes)) {
      return make(w);
    }
    const std::string key = describe(w, layout);
    const int64_t version = w._version();
    const void* data = w.const_data_ptr();
    const c10::StorageImpl* storage = w.storage().unsafeGetStorageImpl();
    State& state = instance();
    std::shared_ptr<const Value> kept;  // w's products at this version, if kept
    uint64_t kept_sum = 0;
    bool same_version = false;  // an entry of w at this version, products kept or not
    std::list<Entry> gone;      // entries of freed weights, destroyed after the lock
    {
      std::lock_guard<std::mutex> lock(state.mutex);
      drop_freed(state, gone);
      const auto it = find(state, key, storage, data);
      if (it != state.entries.end() && it->version == version) {
        same_version = true;
        kept = it->value;
        kept_sum = it->sum;
      }
    }
    const uint64_t sum = kept ? weight_checksum(w) : 0;
    if (kept && sum == kept_sum) {
      {
        std::lock_guard<std::mutex> lock(state.mutex);
        const auto it = find(state, key, storage, data);
        if (it != state.entries.end()) {
          state.entries.splice(state.entries.begin(), state.entries, it);
        }
      }
      detail::count_prepared(/*hit=*/true);
      return *kept;
    }
    detail::count_prepared(/*hit=*/false);
    // At a new version only a mark that w was seen (holding the products would keep their
    // memory from the next call's, which a training loop's every call makes anew).
    const at::Tensor source = same_version ? w.clone() : w;
    const uint64_t source_sum = same_version ? weight_checksum(source) : 0;
    Value value = make(source);
    if (reads(value, source)) return value;
    Entry entry{w.storage().getWeakStorageImpl(), data, version, key, source_sum,
                same_version ? static_cast<int64_t>(w.nbytes()) : 0,
                same_version ? std::make_shared<const Value>(value) : nullptr};
    std::list<Entry> dropped;  // destroyed after the lock is released
    {
      std::lock_guard<std::mutex> lock(state.mutex);
      // Entries of w at another version (whatever their layout), or of w in this layout
      // (replaced) are never hit again; those of freed weights went at the lookup.
      for (auto it = state.entries.begin(); it != state.entries.end();) {
        const auto next = std::next(it);
        const bool of_w = it->owner._unsafe_get_target() == storage && it->data == data;
        if (of_w && (it->key == key || it->version != version)) {
          dropped.splice(dropped.end(), state.entries, it);
        }
        it = next;
      }
      state.entries.push_front(std::move(entry));
      int64_t bytes = 0;
      for (const Entry& kept_entry : state.entries) bytes += kept_entry.bytes;
      while (state.entries.size() > kEntries || bytes > kBytes) {
        bytes -= state.entries.back().bytes;
        dropped.splice(dropped.end(), state.entries, std::prev(state.entries.end()));
      }
    }
    return value;
  }

 private:
  using Owner = c10::weak_intrusive_ptr<c10::StorageImpl>;

  struct Entry {
    Owner owner;
    const void* data;
    int64_t version;
    std::string key;
    uint64_t sum;                        // the checksum of the copy value was made from
    int64_t bytes;                       // w's, where value is kept
    std::shared_ptr<const Value> value;  // null: w was only seen at this version
  };

  struct State {
    std::mutex mutex;
    std::list<Entry> entries;
  };

  // Moves the entries of weights that were freed (a deleted model's) to `gone`, at every
  // call: a server that deletes a model and goes on with the others, whose calls all hit,
  // would keep its products until they were pushed out.
  static void drop_freed(State& state, std::list<Entry>& gone) {
    for (auto it = state.entries.begin(); it != state.entries.end();) {
      const auto next = std::next(it);
      if (it->owner.expired()) gone.splice(gone.end(), state.entries, it);
      it = next;
    }
  }

  // The entry for `key` of the weight at `data` in `storage` (the weak pointer's target
  // compared, not locked: an entry keeps its StorageImpl's memory, so no other storage can be
  // at that address).
  static typename std::list<Entry>::iterator find(State& state, const std::string& key,
                                                  const c10::StorageImpl* storage,
                                                  const void* data) {
    for (auto it = state.entries.begin(); it != state.entries.end(); ++it) {
      if (it->key == key && it->owner._unsafe_get_target() == storage && it->data == data) {
        return it;
      }
    }
    return state.entries.end();
  }

  static State& instance() {
    static State* state = [] {
      auto* made = new State();  // never destroyed: no order of destruction at exit to mind
      detail::register_prepared_cache(
          [made] {
            std::list<Entry> dropped;  // destroyed after the lock is released
            std::lock_guard<std::mutex> lock(made->mutex);
            dropped.swap(made->entries);
          },
          [made] {
            std::lock_guard<std::mutex> lock(made->mutex);
            std::pair<int64_t, int64_t> kept{0, 0};
            for (const Entry& entry : made->entries) {
              kept.first += entry.value ? 1 : 0;
              kept.second += entry.bytes;
            }
            return kept;
          });
      return made;
    }();
    return *state;
  }

  static std::string describe(const at::Tensor& w, const std::string& layout) {
    std::string key = layout + " " + std::string(c10::toString(w.scalar_type()));
    for (const int64_t size : w.sizes()) key += " " + std::to_string(size);
    // oneDNN on or off (torch.backends.mkldnn.enabled) picks the products' library.
    return key + (at::globalContext().userEnabledMkldnn() ? " mkldnn" : " no-mkldnn");
  }
};

}  // namespace fusedrnn::cpu
