// LSTM persistent kernels: one launch runs every step of one layer and direction; each block
// keeps its slice of W_hh in shared memory (slice_layout.h) and the blocks of a group meet at
// one barrier per step (params.h, Groups): a cooperative grid exchanging the new state
// through global memory, or a Hopper cluster exchanging it through distributed shared memory
// (cluster_exchange.cuh). Gates i, f, g, o; the same saved tensors and masking as the step
// kernels (lstm_kernels.cuh).
#pragma once

#include "lstm_cell.cuh"
#include "persistent/cluster_exchange.cuh"
#include "persistent/params.h"
#include "persistent/slice_products.cuh"

namespace fusedrnn {
namespace persistent {

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_fwd_persistent_kernel(LstmFwdParams<T> p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const SliceLayout s = slice_layout(4, p.units, p.hidden, sizeof(T), false,
                                      p.groups.cluster);
  T* a = reinterpret_cast<T*>(smem);
  float* scratch = reinterpret_cast<float*>(smem + s.a_bytes);
  const int H = p.hidden, U = p.units;
  const BlockPart part = block_part(p.groups, U, H, p.batch);
  const int u0 = part.u0, mine = part.mine, b_begin = part.b_begin, b_end = part.b_end;
  const int h16 = round_up(H, kTile), b16 = round_up(p.batch, kTile);
  load_slice(s, a, [&](int r, int c) -> T {
    const int gate = r / U, u = u0 + r % U;
    return (u < H && c < H) ? p.w_hh[(static_cast<int64_t>(gate) * H + u) * H + c] : T(0.0f);
  });
  const bool cluster = p.groups.cluster;
  const auto ex = ClusterExchange<T>::in(s, smem);
  auto locate = [&](int c, int& owner, int& offset) {  // h[c] is unit c % U of block c / U
    if (c < H) owner = c / U, offset = c % U;
  };
  if (cluster) {  // slot 0 takes this block's part of h0 before anyone gathers it
    ex.clear_slots();
    __syncthreads();
    for (int item = threadIdx.x; item < kTile * mine; item += kThreads) {
      const int n = item / mine, j = item % mine, b = b_begin + n;
      if (b < b_end) ex.slot(0)[n * U + j] = p.h_buf[static_cast<int64_t>(b) * h16 + u0 + j];
    }
    step_sync(true);
  }
  __syncthreads();
  for (int step = 0; step < p.steps; ++step) {
    const int64_t t = p.reverse ? p.steps - 1 - step : step;
    const T* h_cur = p.h_buf + static_cast<int64_t>(step % 2) * b16 * h16;
    T* h_next = p.h_buf + static_cast<int64_t>((step + 1) % 2) * b16 * h16;
    for (int b0 = b_begin; b0 < b_end; b0 += kTile) {
      if (cluster) {  // one batch tile per cluster
        ex.gather(step, s.cols, locate);
        __syncthreads();
        slice_products(s, a, ex.tile, ex.ldb, scratch);
      } else {
        slice_products(s, a, h_cur + static_cast<int64_t>(b0) * h16, h16, scratch);
      }
      __syncthreads();
      for (int item = threadIdx.x; item < kTile * mine; item += kThreads) {
        const int n = item / mine, j = item % mine, b = b0 + n, u = u0 + j;
        if (b >= b_end) continue;
        const int64_t row = t * p.batch + b;
        float pre[4];
        for (int k = 0; k < 4; ++k) {
          pre[k] = product(s, scratch, k * U + j, n) +
                   static_cast<float>(p.xproj[row * 4 * H + k * H + u]) +
                   (p.bias ? static_cast<float>(p.bias[k * H + u]) : 0.0f);
        }
        const LstmGates act = lstm_activate(pre[0], pre[1], pre[2], pre[3]);
        const int64_t at = static_cast<int64_t>(b) * H + u;
        const float c_prev = p.c_buf[at];
        const float c = lstm_cell_state(act, c_prev);
        const float h = act.o * tanhf(c);
        const bool active = active_at(p.lengths, b, t);
        const int64_t hb = static_cast<int64_t>(b) * h16 + u;
        if (p.gates) {
          T* gt = p.gates + row * 4 * H + u;
          gt[0] = act.i; gt[H] = act.f; gt[2 * H] = act.g; gt[3 * H] = act.o;
        }
        if (p.cells) p.cells[row * H + u] = active ? c : c_prev;
        p.y[row * H + u] = active ? h : 0.0f;
        const T h_out = active ? T(h) : h_cur[hb];
        h_next[hb] = h_out;
        if (cluster) ex.slot(step + 1)[n * U + j] = h_out;
        if (active) p.c_buf[at] = c;
      }
      __syncthreads();  // the partial products are read before the next tile overwrites them
    }
    step_sync(p.groups.cluster);
  }
#else
  __trap();  // built for an architecture without these tensor-core shapes; never launched
#endif
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) lstm_bwd_persistent_kernel(LstmBwdParams<T> p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const SliceLayout s = slice_layout(4, p.units, p.hidden, sizeof(T), true,
                                      p.groups.cluster);
  T* a = reinterpret_cast<T*>(smem);
  float* scratch = reinterpret_cast<float*>(smem + s.a_bytes);
  const int H = p.hidden, U = p.units;
  const BlockPart part = block_part(p.groups, U, H, p.batch);
  const int u0 = part.u0, mine = part.mine, b_begin = part.b_begin, b_end = part.b_end;
  const int h16 = round_up(H, kTile), b16 = round_up(p.batch, kTile);
  const int ld = 4 * h16;
  load_slice(s, a, [&](int r, int c) -> T {
    const int gate = c / h16, v = c % h16, u = u0 + r;
    return (u < H && v < H) ? p.w_hh[(static_cast<int64_t>(gate) * H + v) * H + u] : T(0.0f);
  });
  const bool cluster = p.groups.cluster;
  const auto ex = ClusterExchange<T>::in(s, smem);
  auto locate = [&](int c, int& owner, int& offset) {  // gate c / h16 of unit v = c % h16
    const int gate = c / h16, v = c % h16;
    if (v < H) owner = v / U, offset = gate * U + v % U;
  };
  if (cluster) ex.clear_slots();
  __syncthreads();
  int64_t t_prev = -1;
  for (int step = 0; step < p.steps; ++step) {
    const int64_t t = p.reverse ? step : p.steps - 1 - step;  // the forward's order, reversed
    const int64_t before = p.reverse ? t + 1 : t - 1;         // the step the forward ran before
    const T* dg_cur = p.dg_buf + static_cast<int64_t>(step % 2) * b16 * ld;
    T* dg_next = p.dg_buf + static_cast<int64_t>((step + 1) % 2) * b16 * ld;
    for (int b0 = b_begin; b0 < b_end; b0 += kTile) {
      if (step > 0 && cluster) {  // one batch tile per cluster
        ex.gather(step, s.cols, locate);
        __syncthreads();
        slice_products(s, a, ex.tile, ex.ldb, scratch);
      } else if (step > 0) {
        slice_products(s, a, dg_cur + static_cast<int64_t>(b0) * ld, ld, scratch);
      }
      __syncthreads();
      for (int item = threadIdx.x; item < kTile * mine; item += kThreads) {
        const int n = item / mine, j = item % mine, b = b0 + n, u = u0 + j;
        if (b >= b_end) continue;
        const int64_t at = static_cast<int64_t>(b) * H + u, row = t * p.batch + b;
        const bool active = active_at(p.lengths, b, t);
        // The gradient of h from the step processed before (in backward order); an
        // inactive step passes it through unchanged.
        float carry;
        if (step == 0) {
          carry = static_cast<float>(p.grad_h_n[at]);
        } else if (active_at(p.lengths, b, t_prev)) {
          carry = static_cast<float>(T(product(s, scratch, j, n)));
        } else {
          carry = p.dh_buf[at];
        }
        const float dh = carry + (active ? static_cast<float>(p.grad_y[row * H + u]) : 0.0f);
        p.dh_buf[at] = dh;
        T* dg = p.dgates + row * 4 * H + u;
        T* dx = dg_next + static_cast<int64_t>(b) * ld + u;
        if (!active) {
          for (int k = 0; k < 4; ++k) {
            dg[k * H] = dx[k * h16] = T(0.0f);
            if (cluster) ex.slot(step + 1)[n * ex.width + k * U + j] = T(0.0f);
          }
          continue;
        }
        const T* g = p.gates + row * 4 * H + u;
        const LstmGates act{g[0], g[H], g[2 * H], g[3 * H]};
        const float c_prev = (before >= 0 && before < p.steps)
                                 ? static_cast<float>(p.cells[(before * p.batch + b) * H + u])
                                 : static_cast<float>(p.c0[at]);
        const LstmGrads grads = lstm_backward(act, c_prev, p.cells[row * H + u], dh,
                                              p.dc_buf[at]);
        const float d[4] = {grads.d_i, grads.d_f, grads.d_g, grads.d_o};
        for (int k = 0; k < 4; ++k) {
          dg[k * H] = dx[k * h16] = T(d[k]);
          if (cluster) ex.slot(step + 1)[n * ex.width + k * U + j] = T(d[k]);
        }
        p.dc_buf[at] = grads.dc_prev;
      }
      __syncthreads();
    }
    t_prev = t;
    step_sync(p.groups.cluster);
  }
#else
  __trap();
#endif
}

}  // namespace persistent
}  // namespace fusedrnn
