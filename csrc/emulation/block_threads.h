// The host emulation's threads for kernels whose threads synchronise (the persistent
// kernels, csrc/persistent/): run_blocks starts one host thread per CUDA thread of every
// block of a launch, all at once, as a cooperative launch has them all resident, and gives
// them what the kernels use of CUDA: threadIdx, blockIdx, blockDim, gridDim, the block's
// dynamic shared memory, __syncthreads(), and cooperative_groups' this_grid().sync(),
// this_cluster().sync() and map_shared_rank() (a cluster's blocks are consecutive, as in a
// 1-D clustered launch). Each barrier is a mutex and a condition variable, which orders
// every write before it before every read after it, as CUDA's barriers do for the memory
// they cover. A barrier that not every thread reaches within kBarrierTimeout (a thread
// skipping a __syncthreads, say) fails the launch with an error instead of hanging it.
// Compiled only with FUSEDRNN_HOST_EMULATION (elementwise_launch.cuh).
#pragma once

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

#include "elementwise_launch.cuh"

namespace fusedrnn {

inline thread_local ThreadIndex gridDim;

namespace emulation {

constexpr auto kBarrierTimeout = std::chrono::seconds(30);

class Launch;

// A barrier of `count` threads of one launch.
class Barrier {
 public:
  Barrier(Launch* launch, int count, const char* what)
      : launch_(launch), count_(count), what_(what) {}
  void arrive_and_wait();
  void fail() {
    std::lock_guard<std::mutex> lock(mutex_);
    failed_ = true;
    changed_.notify_all();
  }

 private:
  Launch* launch_;
  const int count_;
  const char* what_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  bool failed_ = false;
};

// One launch: its blocks' shared memory and barriers, and the first error of its threads.
class Launch {
 public:
  Launch(int blocks, int threads, int64_t smem, int cluster)
      : blocks(blocks), threads(threads), cluster(cluster),
        grid(this, blocks * threads, "the grid barrier") {
    for (int b = 0; b < blocks; ++b) {
      shared.emplace_back(static_cast<size_t>(smem) + 128);
      block_barriers.push_back(std::make_unique<Barrier>(this, threads, "__syncthreads"));
    }
    for (int c = 0; cluster > 0 && c < blocks / cluster; ++c) {
      cluster_barriers.push_back(
          std::make_unique<Barrier>(this, cluster * threads, "the cluster barrier"));
    }
  }

  // Block b's dynamic shared memory, 128-byte aligned.
  unsigned char* shared_memory(int b) {
    auto address = reinterpret_cast<uintptr_t>(shared[b].data());
    return reinterpret_cast<unsigned char*>((address + 127) / 128 * 128);
  }

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error_.empty()) error_ = message;
    }
    grid.fail();
    for (auto& barrier : block_barriers) barrier->fail();
    for (auto& barrier : cluster_barriers) barrier->fail();
  }

  std::string error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

  const int blocks, threads, cluster;
  Barrier grid;
  std::vector<std::vector<unsigned char>> shared;
  std::vector<std::unique_ptr<Barrier>> block_barriers, cluster_barriers;

 private:
  std::mutex mutex_;
  std::string error_;
};

inline void Barrier::arrive_and_wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  const int64_t generation = generation_;
  if (!failed_ && ++arrived_ == count_) {
    arrived_ = 0;
    ++generation_;
    changed_.notify_all();
    return;
  }
  const bool passed = changed_.wait_for(lock, kBarrierTimeout, [&] {
    return generation_ != generation || failed_;
  });
  if (failed_) throw std::runtime_error("another thread of the launch failed");
  if (!passed) {
    lock.unlock();
    const std::string message = std::string(what_) + ": not every thread arrived within " +
                                std::to_string(kBarrierTimeout.count()) +
                                " s (a barrier that some threads skip?)";
    launch_->fail(message);
    throw std::runtime_error(message);
  }
}

// The launch and block of the calling thread.
inline thread_local Launch* current_launch = nullptr;
inline thread_local int current_block = 0;

inline unsigned char* dynamic_shared_memory() {
  return current_launch->shared_memory(current_block);
}

struct ThreadStart {
  Launch* launch;
  int block, thread;
  void (*body)(void*);
  void* context;
};

inline void* run_thread(void* argument) {
  const ThreadStart& start = *static_cast<ThreadStart*>(argument);
  current_launch = start.launch;
  current_block = start.block;
  blockIdx.x = start.block;
  threadIdx.x = start.thread;
  blockDim.x = start.launch->threads;
  gridDim.x = start.launch->blocks;
  try {
    start.body(start.context);
  } catch (const std::exception& error) {
    start.launch->fail(error.what());
  }
  return nullptr;
}

// Runs body(context) on `threads` threads of each of `blocks` blocks with `smem` bytes of
// shared memory each, all at once, grouped in clusters of `cluster` blocks (0: none);
// returns when every thread has, raising the first error of any.
inline void run_blocks(int blocks, int threads, int64_t smem, int cluster,
                       void (*body)(void*), void* context) {
  TORCH_CHECK(cluster == 0 || blocks % cluster == 0, "fusedrnn emulation: ", blocks,
              " blocks do not form clusters of ", cluster);
  Launch launch(blocks, threads, smem, cluster);
  std::vector<ThreadStart> starts;
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) starts.push_back({&launch, b, t, body, context});
  }
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  pthread_attr_setstacksize(&attributes, 256 * 1024);
  std::vector<pthread_t> handles(starts.size());
  size_t started = 0;
  for (; started < starts.size(); ++started) {
    if (pthread_create(&handles[started], &attributes, run_thread, &starts[started]) != 0) {
      launch.fail("could not start " + std::to_string(starts.size()) + " threads");
      break;
    }
  }
  pthread_attr_destroy(&attributes);
  for (size_t i = 0; i < started; ++i) pthread_join(handles[i], nullptr);
  const std::string error = launch.error();
  TORCH_CHECK(error.empty(), "fusedrnn emulation: ", error);
}

}  // namespace emulation

inline void __syncthreads() {
  emulation::current_launch->block_barriers[emulation::current_block]->arrive_and_wait();
}

}  // namespace fusedrnn

namespace cooperative_groups {

struct grid_group {
  void sync() const { fusedrnn::emulation::current_launch->grid.arrive_and_wait(); }
};

inline grid_group this_grid() { return {}; }

struct cluster_group {
  // `pointer` into this block's shared memory, moved to the same place in the shared memory
  // of block `rank` of this cluster.
  template <typename T>
  T* map_shared_rank(T* pointer, int rank) const {
    auto* launch = fusedrnn::emulation::current_launch;
    const int block = fusedrnn::emulation::current_block;
    const auto* own = reinterpret_cast<const unsigned char*>(pointer);
    const int64_t offset = own - launch->shared_memory(block);
    return reinterpret_cast<T*>(launch->shared_memory(block / launch->cluster * launch->cluster +
                                                      rank) + offset);
  }
  void sync() const {
    auto* launch = fusedrnn::emulation::current_launch;
    launch->cluster_barriers[fusedrnn::emulation::current_block / launch->cluster]
        ->arrive_and_wait();
  }
};

inline cluster_group this_cluster() { return {}; }

}  // namespace cooperative_groups
