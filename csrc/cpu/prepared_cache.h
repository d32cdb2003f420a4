// The forward loops' recurrent products, prepared from W_hh (each part's gate rows, copied
// transposed or packed for the BLAS, or paired for the bfloat16 kernel), kept from one call to
// the next while W_hh is unchanged. The preparation is a fixed cost per call and layer: at
// batch 32, hidden 512 on the 2-core AMD EPYC, 0.7 of an LSTM call's 1.4 ms at one step, so
// calls of a few steps (decoding one step at a time) paid it again and again
// (benchmarks/results/epyc-2core-lstm-inference-breakdown).
//
// Unchanged means: the same tensor (held weakly: the cache keeps no weight alive), at the same
// address, with the same sizes and version, and a checksum of its values equal to the one it
// had when the products were made. The version counter alone is not enough: an in-place change
// through `.data` (`p.data.uniform_()`) does not bump the parameter's. The checksum reads W_hh
// once, a fraction of the preparation's cost. Entries are kept for the 16 most recently used
// weights and layouts, at most 256 MiB of weights.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <utility>

namespace fusedrnn::cpu {

// A checksum of a contiguous tensor's bytes: sum over its 64-bit words of word i * (2i + 1)
// modulo 2^64 (odd factors: a change to any one word always changes it), plus the tail bytes.
uint64_t weight_checksum(const at::Tensor& w);

// Cache hits and misses since the process started (for the tests), and emptying the cache.
std::pair<int64_t, int64_t> prepared_cache_counts();
void clear_prepared_cache();

namespace detail {

// The counters and the empty-all hook that every PreparedCache<Value> shares.
void count_prepared(bool hit);
void register_prepared_clear(const std::function<void()>& clear);

}  // namespace detail

template <typename Value>
class PreparedCache {
 public:
  static constexpr size_t kEntries = 16;
  static constexpr int64_t kBytes = int64_t{256} << 20;

  // make(), or the Value it made for an earlier call on w with the same `layout` (the
  // products' own parameters: parts, batch, library) while w is unchanged. Products are kept
  // from a weight's second call at one version on: a training loop, whose optimizer bumps
  // the weights' versions before every forward, pays no checksum and keeps nothing.
  static Value get(const at::Tensor& w, const std::string& layout,
                   const std::function<Value()>& make) {
    if (!w.is_contiguous() || w.is_inference() || w.nbytes() > static_cast<size_t>(kBytes)) {
      return make();
    }
    const std::string key = describe(w, layout);
    const int64_t version = w._version();
    State& state = instance();
    bool same_version = false;  // an entry of w at this version, checksummed or not
    {
      std::lock_guard<std::mutex> lock(state.mutex);
      for (auto it = state.entries.begin(); it != state.entries.end(); ++it) {
        if (it->key != key || it->owner.lock().get() != w.unsafeGetTensorImpl()) continue;
        same_version = it->data == w.const_data_ptr() && it->version == version;
        if (same_version && it->checksummed && weight_checksum(w) == it->sum) {
          state.entries.splice(state.entries.begin(), state.entries, it);
          detail::count_prepared(/*hit=*/true);
          return state.entries.front().value;
        }
        break;
      }
    }
    detail::count_prepared(/*hit=*/false);
    Value value = make();
    const uint64_t sum = same_version ? weight_checksum(w) : 0;
    std::lock_guard<std::mutex> lock(state.mutex);
    // Entries of weights that are gone, or of w before this call, are never hit again.
    state.entries.remove_if([&](const Entry& entry) {
      return entry.owner.expired() ||
             (entry.key == key && entry.owner.lock().get() == w.unsafeGetTensorImpl());
    });
    // At a new version only a mark that w was seen (holding the products would keep their
    // memory from the next call's, which a training loop's every call makes anew).
    state.entries.push_front(Entry{Owner(w.getIntrusivePtr()), w.const_data_ptr(), version,
                                   same_version, sum, key,
                                   same_version ? static_cast<int64_t>(w.nbytes()) : 0,
                                   same_version ? value : Value()});
    int64_t bytes = 0;
    for (const Entry& entry : state.entries) bytes += entry.bytes;
    while (state.entries.size() > kEntries || bytes > kBytes) {
      bytes -= state.entries.back().bytes;
      state.entries.pop_back();
    }
    return value;
  }

 private:
  using Owner = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  struct Entry {
    Owner owner;
    const void* data;
    int64_t version;
    bool checksummed;  // value holds products, made from values whose checksum is sum
    uint64_t sum;
    std::string key;
    int64_t bytes;
    Value value;
  };

  struct State {
    std::mutex mutex;
    std::list<Entry> entries;
  };

  static State& instance() {
    static State* state = [] {
      auto* made = new State();  // never destroyed: no order of destruction at exit to mind
      detail::register_prepared_clear([made] {
        std::lock_guard<std::mutex> lock(made->mutex);
        made->entries.clear();
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
