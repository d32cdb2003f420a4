// The checksum and the shared counters of prepared_cache.h.
#include "prepared_cache.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <vector>

#include "cpu_math.h"


namespace fusedrnn::cpu {
namespace {

// splitmix64's finaliser: a bijective, non-linear mix of one word.
inline uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

constexpr int64_t kWordsPerTask = int64_t{1} << 16;
constexpr uint64_t kPosition = 0x9e3779b97f4a7c15ULL;  // 2^64 / golden ratio

// sum over i of mix(words[i] + (first + i + 1) * kPosition), modulo 2^64. (A linear sum let
// sign flips cancel: bit 63 times an odd factor is 2^63 for every word.)
// With a clone for AVX512DQ's 64-bit multiply (x86-64-v4; GCC 12 on): the AVX-512F clone
// emulates it, at 2.5x the time.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ >= 12
#define FUSEDRNN_CHECKSUM_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "avx512f", "avx2", "default")))
#else
#define FUSEDRNN_CHECKSUM_CLONES FUSEDRNN_SIMD_CLONES
#endif

FUSEDRNN_CHECKSUM_CLONES uint64_t mixed_sum(const uint64_t* __restrict__ words, int64_t count,
                                       uint64_t first) {
  uint64_t sum = 0;
  for (int64_t i = 0; i < count; ++i) {
    sum += mix(words[i] + (first + static_cast<uint64_t>(i) + 1) * kPosition);
  }
  return sum;
}

std::atomic<int64_t> hits{0}, misses{0};

struct Hooks {
  std::function<void()> clear;
  std::function<std::pair<int64_t, int64_t>()> kept;
};

std::mutex& hooks_mutex() {
  static std::mutex* mutex = new std::mutex();
  return *mutex;
}

std::vector<Hooks>& hooks() {
  static auto* all = new std::vector<Hooks>();
  return *all;
}

}  // namespace

uint64_t bytes_checksum(const void* data, int64_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const int64_t count = size / 8;
  uint64_t sum = 0;
  if (reinterpret_cast<uintptr_t>(bytes) % alignof(uint64_t) == 0) {
    // On torch's threads above 2^16 words (512 KiB: 18 us on one Zen 4 core).
    const auto* words = reinterpret_cast<const uint64_t*>(bytes);
    sum = at::parallel_reduce(
        0, count, kWordsPerTask, uint64_t{0},
        [&](int64_t begin, int64_t end, uint64_t partial) {
          return partial + mixed_sum(words + begin, end - begin, static_cast<uint64_t>(begin));
        },
        std::plus<uint64_t>());
  } else {
    for (int64_t i = 0; i < count; ++i) {
      uint64_t word = 0;
      std::memcpy(&word, bytes + 8 * i, 8);
      sum += mix(word + (static_cast<uint64_t>(i) + 1) * kPosition);
    }
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes + 8 * count, static_cast<size_t>(size - 8 * count));
  return sum + mix(tail + (static_cast<uint64_t>(count) + 1) * kPosition);
}

uint64_t weight_checksum(const at::Tensor& w) {
  TORCH_CHECK(w.is_contiguous(), "fusedrnn cpu backend: weight_checksum of a strided tensor");
  return bytes_checksum(w.const_data_ptr(), static_cast<int64_t>(w.nbytes()));
}

std::pair<int64_t, int64_t> prepared_cache_counts() { return {hits.load(), misses.load()}; }

void clear_prepared_cache() {
  std::lock_guard<std::mutex> lock(hooks_mutex());
  for (const Hooks& hook : hooks()) hook.clear();
}

std::pair<int64_t, int64_t> prepared_cache_kept() {
  std::lock_guard<std::mutex> lock(hooks_mutex());
  std::pair<int64_t, int64_t> total{0, 0};
  for (const Hooks& hook : hooks()) {
    const auto [entries, bytes] = hook.kept();
    total.first += entries;
    total.second += bytes;
  }
  return total;
}

namespace detail {

void count_prepared(bool hit) { (hit ? hits : misses).fetch_add(1); }

void register_prepared_cache(const std::function<void()>& clear,
                             const std::function<std::pair<int64_t, int64_t>()>& kept) {
  std::lock_guard<std::mutex> lock(hooks_mutex());
  hooks().push_back({clear, kept});
}

}  // namespace detail
}  // namespace fusedrnn::cpu
