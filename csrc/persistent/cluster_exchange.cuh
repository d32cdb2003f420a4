// The cluster design's exchange through distributed shared memory (Hopper). Each block of a
// cluster keeps two slots (step s writes slot (s + 1) % 2, reads slot s % 2) holding its own
// part of the exchanged vector for the cluster's 16 batch rows: `width` elements per row (the
// forward: h of its units; the backward: the gate gradients of its units). Before each
// step's product the block gathers the whole vector from the slots of every block of the
// cluster into its B tile (16 rows x ldb, row n = batch row n). The step's one cluster
// barrier orders every slot write before the next step's gathers, and every gather of a
// slot before that slot is written again two steps later. Also the launch configuration of
// a clustered grid (cluster_config).
#pragma once

#ifdef FUSEDRNN_HOST_EMULATION
#include "emulation/block_threads.h"
#else
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

#include "persistent/slice_layout.h"

namespace fusedrnn {
namespace persistent {

#ifndef FUSEDRNN_HOST_EMULATION
// The launch configuration of `blocks` blocks of kThreads threads in 1-D clusters of
// `cluster` blocks, `smem` bytes of dynamic shared memory each, on `stream`; `attribute`
// receives the cluster dimension and must outlive the configuration.
inline cudaLaunchConfig_t cluster_config(int blocks, int cluster, int64_t smem,
                                         cudaStream_t stream, cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = cluster;
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}
#endif

template <typename T>
struct ClusterExchange {
  T* tile;   // kTile x ldb, the B operand of the products
  T* slots;  // 2 x kTile x width
  int ldb, width;

  __device__ T* slot(int step) const { return slots + (step % 2) * kTile * width; }

  // The layout's tile and slots in this block's shared memory (after A and the scratch).
  __device__ static ClusterExchange in(const SliceLayout& s, unsigned char* smem) {
    unsigned char* tile = smem + s.a_bytes + s.scratch_bytes;
    return {reinterpret_cast<T*>(tile), reinterpret_cast<T*>(tile + s.tile_bytes), s.ldb,
            s.width};
  }

  __device__ void clear_slots() const {
    for (int idx = threadIdx.x; idx < 2 * kTile * width; idx += kThreads) slots[idx] = T(0.0f);
  }

  // tile[n][c] for c < cols: element `offset` of row n of slot `step % 2` of cluster block
  // `owner`, where locate(c, owner, offset) says which (owner < 0: zero padding).
  template <typename Locate>
  __device__ void gather(int step, int cols, Locate locate) const {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FUSEDRNN_HOST_EMULATION)
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    const T* own = slot(step);
    for (int idx = threadIdx.x; idx < kTile * cols; idx += kThreads) {
      const int n = idx / cols, c = idx % cols;
      int owner = -1, offset = 0;
      locate(c, owner, offset);
      T value = T(0.0f);
      if (owner >= 0) value = cluster.map_shared_rank(own, owner)[n * width + offset];
      tile[n * ldb + c] = value;
    }
#else
    __trap();  // no clusters before sm_90; the launcher never starts this design there
#endif
  }
};

}  // namespace persistent
}  // namespace fusedrnn
