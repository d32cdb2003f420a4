// The shared-memory layout of the persistent kernels (host and device).
//
// A persistent kernel splits the hidden units over the blocks of a group (a cooperative grid
// or a thread-block cluster, params.h): block q owns units [q * units, q * units + units) and keeps, for the whole sequence, the slice
// of W_hh those units need in shared memory as the row-major matrix A of its per-step
// product A @ B (tensor cores, float32 accumulation):
//
//   forward   A: (gates * units) x H rows of W_hh, row k * units + j = W_hh[k * H + u0 + j]
//             B: the previous state h (H x 16 batch rows), read from the exchange buffer
//                (global memory) or the block's gathered tile (cluster design)
//   backward  A: units x (gates * H) columns of W_hh, A[j][k * H16 + v] = W_hh[k * H + v][u0 + j]
//             B: the previous step's gate gradients (gates * H16 x 16 batch rows)
//
// The rows of A are padded to a multiple of 16 (the tile of the product), its columns to a
// multiple of 16 per gate block (H16), and each row by 8 more elements (bank spread and the
// 32-byte alignment of the tiles). After A come the per-warp partial products: 16 x 16
// float32 tiles, `groups` per 16-row tile of A (the warps split the columns of A in
// `groups` ranges when there are fewer row tiles than warps). The cluster design adds the
// gathered B tile and two exchange slots (cluster_exchange.cuh).
//
// fusedrnn/backends/cuda_plan.py asks this layout for its byte count (through
// fusedrnn._C.persistent_smem_bytes) to decide whether a call fits on chip.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__
#else
#define FUSEDRNN_HOST_DEVICE
#endif

namespace fusedrnn {
namespace persistent {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 16;        // rows and batch columns of one product tile
constexpr int kRowPad = 8;       // extra elements per row of A
constexpr int kBackwardUnits = 16;  // units per block of the backward kernels
constexpr int kMaxCluster = 16;     // blocks per thread-block cluster (Hopper, non-portable)

FUSEDRNN_HOST_DEVICE inline int round_up(int64_t value, int multiple) {
  return static_cast<int>((value + multiple - 1) / multiple * multiple);
}

struct SliceLayout {
  int rows;      // rows of A holding weights
  int rows_pad;  // rows of A, a multiple of kTile
  int cols;      // columns of A (the K of the product), a multiple of kTile
  int lda;       // elements per row of A in shared memory
  int m_tiles;   // rows_pad / kTile
  int groups;    // column ranges the warps split K in
  int64_t a_bytes;
  int64_t scratch_bytes;
  // The cluster design only (cluster_exchange.cuh): the B tile gathered each step, 16 rows
  // of ldb elements, then two slots of 16 rows of `width` elements, the block's own part
  // (slot_bytes each, back to back).
  int ldb, width;
  int64_t tile_bytes, slot_bytes;

  FUSEDRNN_HOST_DEVICE int64_t bytes() const {
    return a_bytes + scratch_bytes + tile_bytes + 2 * slot_bytes;
  }
};

// gates: 4 (LSTM) or 3 (GRU); units: hidden units per block; itemsize: bytes per element of
// the weights (4, or 2 for float16 / bfloat16); cluster: the blocks exchange through
// distributed shared memory (the tile and the slots), else through global memory.
FUSEDRNN_HOST_DEVICE inline SliceLayout slice_layout(int gates, int units, int64_t hidden,
                                                     int itemsize, bool backward,
                                                     bool cluster) {
  SliceLayout s{};
  const int h16 = round_up(hidden, kTile);
  s.rows = backward ? units : gates * units;
  s.rows_pad = round_up(s.rows, kTile);
  s.cols = backward ? gates * h16 : h16;
  s.lda = s.cols + kRowPad;
  s.m_tiles = s.rows_pad / kTile;
  s.groups = s.m_tiles >= kWarps ? 1 : kWarps / s.m_tiles;
  s.a_bytes = static_cast<int64_t>(s.rows_pad) * s.lda * itemsize;
  s.scratch_bytes = static_cast<int64_t>(s.m_tiles) * s.groups * kTile * kTile * 4;
  if (cluster) {
    s.ldb = s.cols + kRowPad;
    s.width = backward ? gates * units : units;
    s.tile_bytes = static_cast<int64_t>(kTile) * s.ldb * itemsize;
    s.slot_bytes = static_cast<int64_t>(kTile) * s.width * itemsize;
  }
  return s;
}

}  // namespace persistent
}  // namespace fusedrnn
