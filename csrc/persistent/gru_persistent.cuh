// GRU persistent kernels: the structure of lstm_persistent.cuh for gates r, z, n (the cell's
// math in gru_cell.cuh); the same saved tensors and masking as the step kernels
// (gru_kernels.cuh).
#pragma once

#include "gru_cell.cuh"
#include "persistent/cluster_exchange.cuh"
#include "persistent/params.h"
#include "persistent/slice_products.cuh"

namespace fusedrnn {
namespace persistent {

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) gru_fwd_persistent_kernel(GruFwdParams<T> p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const SliceLayout s = slice_layout(3, p.units, p.hidden, sizeof(T), false,
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
        float xg[3], hg[3];
        for (int k = 0; k < 3; ++k) {
          xg[k] = static_cast<float>(p.xproj[row * 3 * H + k * H + u]) +
                  (p.b_ih ? static_cast<float>(p.b_ih[k * H + u]) : 0.0f);
          hg[k] = product(s, scratch, k * U + j, n) +
                  (p.b_hh ? static_cast<float>(p.b_hh[k * H + u]) : 0.0f);
        }
        const GruGates act = gru_activate(xg[0], xg[1], xg[2], hg[0], hg[1], hg[2]);
        const int64_t hb = static_cast<int64_t>(b) * h16 + u;
        const float h = gru_state(act, h_cur[hb]);
        const bool active = active_at(p.lengths, b, t);
        if (p.gates) {
          T* gt = p.gates + row * 3 * H + u;
          gt[0] = act.r; gt[H] = act.z; gt[2 * H] = act.n;
        }
        if (p.hidden_n) p.hidden_n[row * H + u] = hg[2];
        p.y[row * H + u] = active ? h : 0.0f;
        const T h_out = active ? T(h) : h_cur[hb];
        h_next[hb] = h_out;
        if (cluster) ex.slot(step + 1)[n * U + j] = h_out;
      }
      __syncthreads();
    }
    step_sync(p.groups.cluster);
  }
#else
  __trap();
#endif
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) gru_bwd_persistent_kernel(GruBwdParams<T> p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  FUSEDRNN_DYNAMIC_SHARED(smem);
  const SliceLayout s = slice_layout(3, p.units, p.hidden, sizeof(T), true,
                                      p.groups.cluster);
  T* a = reinterpret_cast<T*>(smem);
  float* scratch = reinterpret_cast<float*>(smem + s.a_bytes);
  const int H = p.hidden, U = p.units;
  const BlockPart part = block_part(p.groups, U, H, p.batch);
  const int u0 = part.u0, mine = part.mine, b_begin = part.b_begin, b_end = part.b_end;
  const int h16 = round_up(H, kTile), b16 = round_up(p.batch, kTile);
  const int ld = 3 * h16;
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
    const int64_t t = p.reverse ? step : p.steps - 1 - step;
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
        float carry;
        if (step == 0) {
          carry = static_cast<float>(p.grad_h_n[at]);
        } else if (active_at(p.lengths, b, t_prev)) {
          const float z_prev = p.gates[(t_prev * p.batch + b) * 3 * H + H + u];
          carry = static_cast<float>(T(product(s, scratch, j, n))) + p.dh_buf[at] * z_prev;
        } else {
          carry = p.dh_buf[at];
        }
        const float dh = carry + (active ? static_cast<float>(p.grad_y[row * H + u]) : 0.0f);
        p.dh_buf[at] = dh;
        T* din = p.dgates_in + row * 3 * H + u;
        T* dhid = p.dgates_hid + row * 3 * H + u;
        T* dx = dg_next + static_cast<int64_t>(b) * ld + u;
        if (!active) {
          for (int k = 0; k < 3; ++k) {
            din[k * H] = dhid[k * H] = dx[k * h16] = T(0.0f);
            if (cluster) ex.slot(step + 1)[n * ex.width + k * U + j] = T(0.0f);
          }
          continue;
        }
        const T* g = p.gates + row * 3 * H + u;
        const GruGates act{g[0], g[H], g[2 * H]};
        const GruGrads d = gru_backward(act, p.h_prev[row * H + u], p.hidden_n[row * H + u], dh);
        din[0] = d.d_r; din[H] = d.d_z; din[2 * H] = d.d_n;
        const float hid[3] = {d.d_r, d.d_z, d.d_n * act.r};
        for (int k = 0; k < 3; ++k) {
          dhid[k * H] = dx[k * h16] = T(hid[k]);
          if (cluster) ex.slot(step + 1)[n * ex.width + k * U + j] = T(hid[k]);
        }
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
