// The host emulation's launchers of the persistent kernels (the declarations of
// persistent/params.h, whose CUDA definitions are persistent/launch.cuh): each launch runs
// one host thread per CUDA thread of every block, all at once (block_threads.h), with the
// cluster barrier among a cluster's blocks or the grid barrier among all. Nothing is
// checked of a GPU's limits: there is none.
#pragma once

#include <cstdint>

#include "emulation/block_threads.h"
#include "persistent/gru_persistent.cuh"
#include "persistent/lstm_persistent.cuh"

namespace fusedrnn {
namespace persistent {

template <typename Params>
void launch_emulated(void (*kernel)(Params), const Params& params, int blocks, int64_t smem) {
  struct Call {
    void (*kernel)(Params);
    const Params* params;
  } call{kernel, &params};
  const int cluster = params.groups.cluster ? params.groups.slices : 0;
  emulation::run_blocks(blocks, kThreads, smem, cluster, [](void* context) {
    const Call& c = *static_cast<const Call*>(context);
    c.kernel(*c.params);
  }, &call);
}

template <typename T>
void launch(const LstmFwdParams<T>& p, int blocks, int64_t smem) {
  launch_emulated(lstm_fwd_persistent_kernel<T>, p, blocks, smem);
}

template <typename T>
void launch(const LstmBwdParams<T>& p, int blocks, int64_t smem) {
  launch_emulated(lstm_bwd_persistent_kernel<T>, p, blocks, smem);
}

template <typename T>
void launch(const GruFwdParams<T>& p, int blocks, int64_t smem) {
  launch_emulated(gru_fwd_persistent_kernel<T>, p, blocks, smem);
}

template <typename T>
void launch(const GruBwdParams<T>& p, int blocks, int64_t smem) {
  launch_emulated(gru_bwd_persistent_kernel<T>, p, blocks, smem);
}

}  // namespace persistent
}  // namespace fusedrnn
