// The host side of the persistent kernels: the ops fusedrnn::{lstm,gru}_persistent_{fwd,bwd}
// (schemas in fusedrnn/backends/recurrence.py), with the contracts of the recurrence ops of
// csrc/recurrence.cpp plus `units`, the hidden units per block, and `cluster`, whether the
// blocks meet in thread-block clusters (one per batch tile) or across the whole grid, as
// fusedrnn's planner chose (fusedrnn/backends/cuda_plan.py). Each allocates the launch's
// exchange buffers, runs one launch (persistent/params.h) and finishes the rest on the host.
#include <ATen/ATen.h>

#include <tuple>

#include "cuda_ops.h"
#include "kernels.h"
#include "persistent/params.h"
#include "persistent/slice_layout.h"
#include "recurrence_args.h"
#include "typed_launchers.h"

namespace fusedrnn {

using at::Tensor;

namespace {

using persistent::kTile;
using persistent::round_up;

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename T>
const T* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? data_or_null<T>(*t) : nullptr;
}

const int64_t* lengths_or_null(const Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

// The launch geometry of one call: blocks of `units` hidden units, grouped (params.h,
// Groups) into one cooperative grid or into clusters of one batch tile each.
struct Geometry {
  int blocks;
  int64_t smem;
  persistent::Groups groups;
};

Geometry geometry(int64_t units, bool cluster, int64_t batch, int64_t hidden, int gates,
                  const Tensor& like, bool backward) {
  TORCH_CHECK(units > 0 && units % 4 == 0 && (!backward || units == persistent::kBackwardUnits),
              "fusedrnn cuda backend: units must be a positive multiple of 4",
              backward ? " (16 for the backward kernels)" : "", ", got ", units);
  TORCH_CHECK(hidden <= (int64_t{1} << 24), "fusedrnn cuda backend: hidden size ", hidden,
              " is too large for the persistent kernels");
  const int slices = static_cast<int>((hidden + units - 1) / units);
  TORCH_CHECK(!cluster || slices <= persistent::kMaxCluster, "fusedrnn cuda backend: ", slices,
              " blocks of ", units, " units do not fit one cluster (at most ",
              persistent::kMaxCluster, ")");
  const int rows = cluster ? kTile : round_up(batch, kTile);
  const int groups = static_cast<int>((batch + rows - 1) / rows);
  const auto layout = persistent::slice_layout(gates, static_cast<int>(units), hidden,
                                               static_cast<int>(like.element_size()), backward,
                                               cluster);
  return {slices * groups, layout.bytes(), {slices, rows, cluster}};
}

// (2, B16, width) zeros; slot 0 takes `state` (B, H) when given.
Tensor exchange_buffer(int64_t batch, int64_t width, const Tensor& like, const Tensor& state) {
  Tensor buf = at::zeros({2, round_up(batch, kTile), width}, like.options());
  if (state.defined()) buf.select(0, 0).narrow(0, 0, batch).narrow(1, 0, state.size(1)).copy_(state);
  return buf;
}

// The state in slot `slot` of an exchange buffer, as a tensor of its own.
Tensor slot_state(const Tensor& buf, int64_t slot, int64_t batch, int64_t hidden) {
  return buf.select(0, slot).narrow(0, 0, batch).narrow(1, 0, hidden).clone();
}

Tensor float_copy(const Tensor& t) { return t.to(at::kFloat, false, /*copy=*/true); }

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_persistent_fwd(
    const Tensor& xproj, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths_opt, bool reverse,
    bool save, int64_t units, bool cluster) {
  const RecurrenceSizes sizes =
      check_lstm_fwd(xproj, bias, w_hh, h0, c0, lengths_opt, kKernelDevice);
  if (sizes.steps == 0 || sizes.batch == 0 || sizes.hidden == 0) {
    return lstm_recurrence_fwd(xproj, bias, w_hh, h0, c0, lengths_opt, reverse, save);
  }
  KernelDeviceGuard guard(xproj.device());
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Geometry geo = geometry(units, cluster, batch, hidden, 4, xproj, false);
  Tensor h_buf = exchange_buffer(batch, round_up(hidden, kTile), xproj, h0);
  Tensor c_buf = float_copy(c0);
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor gates = save ? at::empty_like(xproj) : xproj.new_empty({0});
  Tensor cells = save ? at::empty({steps, batch, hidden}, xproj.options()) : xproj.new_empty({0});
  const Tensor lengths = sizes.lengths;
  FUSEDRNN_DISPATCH(xproj.scalar_type(), "lstm_persistent_fwd", [&] {
    using T = scalar_t;
    persistent::LstmFwdParams<T> p{
        xproj.data_ptr<T>(), data_or_null<T>(bias), w_hh.data_ptr<T>(), lengths_or_null(lengths),
        y.data_ptr<T>(), data_or_null<T>(gates), data_or_null<T>(cells), h_buf.data_ptr<T>(),
        c_buf.data_ptr<float>(), static_cast<int>(steps), static_cast<int>(batch),
        static_cast<int>(hidden), static_cast<int>(units), geo.groups, reverse};
    persistent::launch(p, geo.blocks, geo.smem);
  });
  return {y, slot_state(h_buf, steps % 2, batch, hidden), c_buf.to(xproj.scalar_type()), gates,
          cells};
}

std::tuple<Tensor, Tensor, Tensor> lstm_persistent_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& c0, const std::optional<Tensor>& lengths_opt, const Tensor& gates,
    const Tensor& cells, bool reverse, int64_t units, bool cluster) {
  const RecurrenceSizes sizes = check_lstm_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt,
                                               gates, cells, kKernelDevice);
  if (sizes.steps == 0 || sizes.batch == 0 || sizes.hidden == 0) {
    return lstm_recurrence_bwd(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt, gates, cells,
                               reverse);
  }
  KernelDeviceGuard guard(gates.device());
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Geometry geo = geometry(units, cluster, batch, hidden, 4, gates, true);
  Tensor dgates = at::empty_like(gates);
  Tensor dg_buf = exchange_buffer(batch, 4 * round_up(hidden, kTile), gates, Tensor());
  Tensor dh_buf = at::empty({batch, hidden}, gates.options().dtype(at::kFloat));
  Tensor dc_buf = float_copy(grad_c_n);
  const Tensor lengths = sizes.lengths;
  FUSEDRNN_DISPATCH(gates.scalar_type(), "lstm_persistent_bwd", [&] {
    using T = scalar_t;
    persistent::LstmBwdParams<T> p{
        grad_y.data_ptr<T>(), grad_h_n.data_ptr<T>(), w_hh.data_ptr<T>(), c0.data_ptr<T>(),
        lengths_or_null(lengths), gates.data_ptr<T>(), cells.data_ptr<T>(), dgates.data_ptr<T>(),
        dg_buf.data_ptr<T>(), dh_buf.data_ptr<float>(), dc_buf.data_ptr<float>(),
        static_cast<int>(steps), static_cast<int>(batch), static_cast<int>(hidden),
        static_cast<int>(units), geo.groups, reverse};
    persistent::launch(p, geo.blocks, geo.smem);
  });
  const int64_t last = reverse ? steps - 1 : 0;  // the last step of the backward's loop
  const Tensor rec = at::mm(dgates.select(0, last), w_hh);
  return {dgates, lstm_grad_h0(rec, dh_buf, lengths, last), dc_buf.to(gates.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_persistent_fwd(
    const Tensor& xproj, const std::optional<Tensor>& b_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths_opt, bool reverse, bool save, int64_t units,
    bool cluster) {
  const RecurrenceSizes sizes =
      check_gru_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths_opt, kKernelDevice);
  if (sizes.steps == 0 || sizes.batch == 0 || sizes.hidden == 0) {
    return gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths_opt, reverse, save);
  }
  KernelDeviceGuard guard(xproj.device());
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Geometry geo = geometry(units, cluster, batch, hidden, 3, xproj, false);
  Tensor h_buf = exchange_buffer(batch, round_up(hidden, kTile), xproj, h0);
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor gates = save ? at::empty_like(xproj) : xproj.new_empty({0});
  Tensor hidden_n =
      save ? at::empty({steps, batch, hidden}, xproj.options()) : xproj.new_empty({0});
  const Tensor lengths = sizes.lengths;
  FUSEDRNN_DISPATCH(xproj.scalar_type(), "gru_persistent_fwd", [&] {
    using T = scalar_t;
    persistent::GruFwdParams<T> p{
        xproj.data_ptr<T>(), data_or_null<T>(b_ih), data_or_null<T>(b_hh), w_hh.data_ptr<T>(),
        lengths_or_null(lengths), y.data_ptr<T>(), data_or_null<T>(gates),
        data_or_null<T>(hidden_n), h_buf.data_ptr<T>(), static_cast<int>(steps),
        static_cast<int>(batch), static_cast<int>(hidden), static_cast<int>(units), geo.groups,
        reverse};
    persistent::launch(p, geo.blocks, geo.smem);
  });
  return {y, slot_state(h_buf, steps % 2, batch, hidden), gates, hidden_n};
}

std::tuple<Tensor, Tensor, Tensor> gru_persistent_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h_prev,
    const std::optional<Tensor>& lengths_opt, const Tensor& gates, const Tensor& hidden_n,
    bool reverse, int64_t units, bool cluster) {
  const RecurrenceSizes sizes = check_gru_bwd(grad_y, grad_h_n, w_hh, h_prev, lengths_opt, gates,
                                              hidden_n, kKernelDevice);
  if (sizes.steps == 0 || sizes.batch == 0 || sizes.hidden == 0) {
    return gru_recurrence_bwd(grad_y, grad_h_n, w_hh, h_prev, lengths_opt, gates, hidden_n,
                              reverse);
  }
  KernelDeviceGuard guard(gates.device());
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const Geometry geo = geometry(units, cluster, batch, hidden, 3, gates, true);
  Tensor dgates_in = at::empty_like(gates), dgates_hid = at::empty_like(gates);
  Tensor dg_buf = exchange_buffer(batch, 3 * round_up(hidden, kTile), gates, Tensor());
  Tensor dh_buf = at::empty({batch, hidden}, gates.options().dtype(at::kFloat));
  const Tensor lengths = sizes.lengths;
  FUSEDRNN_DISPATCH(gates.scalar_type(), "gru_persistent_bwd", [&] {
    using T = scalar_t;
    persistent::GruBwdParams<T> p{
        grad_y.data_ptr<T>(), grad_h_n.data_ptr<T>(), w_hh.data_ptr<T>(), h_prev.data_ptr<T>(),
        lengths_or_null(lengths), gates.data_ptr<T>(), hidden_n.data_ptr<T>(),
        dgates_in.data_ptr<T>(), dgates_hid.data_ptr<T>(), dg_buf.data_ptr<T>(),
        dh_buf.data_ptr<float>(), static_cast<int>(steps), static_cast<int>(batch),
        static_cast<int>(hidden), static_cast<int>(units), geo.groups, reverse};
    persistent::launch(p, geo.blocks, geo.smem);
  });
  const int64_t last = reverse ? steps - 1 : 0;
  const Tensor rec = at::mm(dgates_hid.select(0, last), w_hh);
  return {dgates_in, dgates_hid, gru_grad_h0(rec, dh_buf, gates.select(0, last), lengths, last)};
}

// The planner's questions about a GPU (not asked of the host emulation, which has none).
#ifndef FUSEDRNN_HOST_EMULATION
namespace {

persistent::Kernel kernel_named(const std::string& kernel) {
  using persistent::Kernel;
  if (kernel == "lstm_fwd") return Kernel::kLstmFwd;
  if (kernel == "lstm_bwd") return Kernel::kLstmBwd;
  if (kernel == "gru_fwd") return Kernel::kGruFwd;
  TORCH_CHECK(kernel == "gru_bwd",
              "fusedrnn: kernel must be lstm_fwd, lstm_bwd, gru_fwd or gru_bwd, got ", kernel);
  return Kernel::kGruBwd;
}

}  // namespace

// For fusedrnn._C.persistent_blocks_per_sm (cluster 0) and persistent_max_clusters (cluster
// > 0): `kernel` is lstm_fwd, lstm_bwd, gru_fwd or gru_bwd; see params.h.
int persistent_occupancy(const std::string& kernel, at::ScalarType dtype, int64_t smem,
                         int cluster, int device) {
  const persistent::Kernel which = kernel_named(kernel);
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  int result = 0;
  FUSEDRNN_DISPATCH(dtype, "persistent_occupancy", [&] {
    result = cluster > 0 ? persistent::max_clusters<scalar_t>(which, smem, cluster)
                         : persistent::blocks_per_sm<scalar_t>(which, smem);
  });
  return result;
}
#endif

}  // namespace fusedrnn
