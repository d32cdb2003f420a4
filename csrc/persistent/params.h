// The arguments of the persistent kernels (lstm_persistent.cuh, gru_persistent.cuh) as
// plain structs, and their typed launchers, instantiated per dtype in persistent_<dtype>.cu
// and called by the host ops of persistent_ops.cpp.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace persistent {

// How the blocks share the work: `slices` blocks per group, block q of a group owning hidden
// units [q * units, q * units + units); group g owns batch rows [g * group_rows, ...) (a
// multiple of 16). A group's blocks meet at one barrier per step: with one group, the whole
// grid's (a cooperative launch); on Hopper, with one thread-block cluster per group, their
// cluster's (the groups never wait for each other).
struct Groups {
  int slices;
  int group_rows;
  bool cluster;
};

// Shapes: T steps, B batch, H hidden, B16 / H16 rounded up to 16. Every pointer is to
// contiguous device memory of the input dtype T unless marked float32; "scratch" buffers
// are owned by the launch and live only during it.
template <typename T>
struct LstmFwdParams {
  const T* xproj;          // (T, B, 4H) x @ W_ih^T, read
  const T* bias;           // (4H) b_ih + b_hh, read; null: no bias
  const T* w_hh;           // (4H, H), read once into shared memory
  const int64_t* lengths;  // (B) int64, read; null: every step active
  T* y;                    // (T, B, H) out: h, zero past a row's end
  T* gates;                // (T, B, 4H) out: activated i, f, g, o; null: not saved
  T* cells;                // (T, B, H) out: c, held past a row's end; null: not saved
  T* h_buf;                // (2, B16, H16) scratch, in/out: slot 0 holds h0 (zero padded)
                           //   on entry; step s reads slot s % 2 and writes the other;
                           //   slot T % 2 holds h_n on exit
  float* c_buf;            // (B, H) float32 in/out: c0 on entry, c_n on exit
  int steps, batch, hidden, units;
  Groups groups;
  bool reverse;
};

template <typename T>
struct LstmBwdParams {
  const T* grad_y;         // (T, B, H), read
  const T* grad_h_n;       // (B, H), read
  const T* w_hh;           // (4H, H), read once into shared memory (as columns)
  const T* c0;             // (B, H), read
  const int64_t* lengths;  // (B) int64 or null
  const T* gates;          // (T, B, 4H) activated, as saved by the forward; read
  const T* cells;          // (T, B, H) as saved by the forward; read
  T* dgates;               // (T, B, 4H) out: pre-activation gradients, zero if inactive
  T* dg_buf;               // (2, B16, 4 * H16) scratch, zero on entry: step s reads slot
                           //   s % 2 (the dgates of step s - 1, gate k at column k * H16)
  float* dh_buf;           // (B, H) float32 out: the gradient of h at the last step processed
  float* dc_buf;           // (B, H) float32 in/out: grad_c_n on entry, grad_c0 on exit
  int steps, batch, hidden, units;
  Groups groups;
  bool reverse;
};

// The GRU's, with the conventions of LstmFwdParams.
template <typename T>
struct GruFwdParams {
  const T* xproj;          // (T, B, 3H) x @ W_ih^T, read
  const T* b_ih;           // (3H) or null
  const T* b_hh;           // (3H) or null
  const T* w_hh;           // (3H, H), read once into shared memory
  const int64_t* lengths;  // (B) int64 or null
  T* y;                    // (T, B, H) out: h, zero past a row's end
  T* gates;                // (T, B, 3H) out: activated r, z, n; null: not saved
  T* hidden_n;             // (T, B, H) out: hg_n (with b_hh); null: not saved
  T* h_buf;                // (2, B16, H16) scratch, in/out as in LstmFwdParams
  int steps, batch, hidden, units;
  Groups groups;
  bool reverse;
};

template <typename T>
struct GruBwdParams {
  const T* grad_y;         // (T, B, H), read
  const T* grad_h_n;       // (B, H), read
  const T* w_hh;           // (3H, H), read once into shared memory (as columns)
  const T* h_prev;         // (T, B, H): the state entering each step, read
  const int64_t* lengths;  // (B) int64 or null
  const T* gates;          // (T, B, 3H) activated r, z, n as saved; read
  const T* hidden_n;       // (T, B, H) as saved; read
  T* dgates_in;            // (T, B, 3H) out: (dr, dz, dn), zero if inactive
  T* dgates_hid;           // (T, B, 3H) out: (dr, dz, dn * r), zero if inactive
  T* dg_buf;               // (2, B16, 3 * H16) scratch, zero on entry: step s reads slot
                           //   s % 2 (the dgates_hid of step s - 1, gate k at column k * H16)
  float* dh_buf;           // (B, H) float32 out: the gradient of h at the last step processed
  int steps, batch, hidden, units;
  Groups groups;
  bool reverse;
};

enum class Kernel { kLstmFwd, kLstmBwd, kGruFwd, kGruBwd };

// Each launcher checks that its barrier can work (a cooperative grid whose blocks can all be
// resident together, or a cluster the device can place; else it raises, never launches)
// and starts one launch of `blocks` blocks with `smem` bytes each on the current stream.
template <typename T> void launch(const LstmFwdParams<T>& p, int blocks, int64_t smem);
template <typename T> void launch(const LstmBwdParams<T>& p, int blocks, int64_t smem);
template <typename T> void launch(const GruFwdParams<T>& p, int blocks, int64_t smem);
template <typename T> void launch(const GruBwdParams<T>& p, int blocks, int64_t smem);

// How many blocks of `kernel` with `smem` bytes of shared memory fit on one multiprocessor
// of the current device (0 when the shared memory exceeds its limit; -1 when the extension
// holds no code of the kernel for compute capability 8.0+).
template <typename T> int blocks_per_sm(Kernel kernel, int64_t smem);

// How many clusters of `cluster` blocks of `kernel` with `smem` bytes each the current device
// can hold at once (0: none; -1 when the extension holds no sm_90 code of the kernel).
template <typename T> int max_clusters(Kernel kernel, int64_t smem, int cluster);

}  // namespace persistent
}  // namespace fusedrnn
