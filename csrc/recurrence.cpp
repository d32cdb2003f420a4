// The time loops of the cuda backend: per step one cuBLAS product (through ATen) into a
// preallocated buffer and one fused pointwise kernel (kernels.h). The input projection and
// the weight gradients, one product over all steps each, are taken by the Python launcher
// (fusedrnn/backends/cuda.py), which calls these as the ops fusedrnn::*_recurrence_*.
#include <ATen/ATen.h>

#include <tuple>

#include "cuda_ops.h"
#include "kernels.h"
#include "recurrence_args.h"

namespace fusedrnn {

using at::Tensor;

// xproj (T,B,4H) = x W_ih^T; bias (4H) = b_ih + b_hh or undefined; w_hh (4H,H); h0, c0 (B,H).
// Returns y (T,B,H), h_n, c_n (B,H), gates (T,B,4H) activated, cells (T,B,H).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_recurrence_fwd(
    const Tensor& xproj_in, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths_opt, bool reverse,
    bool save) {
  const auto [steps, batch, hidden, lengths] =
      check_lstm_fwd(xproj_in, bias, w_hh, h0, c0, lengths_opt, kKernelDevice);
  KernelDeviceGuard guard(xproj_in.device());
  const Tensor xproj = (bias.has_value() && bias->defined()) ? xproj_in + *bias : xproj_in;

  Tensor gates = at::empty_like(xproj);
  Tensor cells = at::empty({steps, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor h_cur = h0.clone(), h_next = at::empty_like(h0);
  const Tensor w_t = w_hh.t();
  Tensor c_prev = c0;
  for (int64_t t : time_order(steps, reverse)) {
    Tensor g = gates.select(0, t);
    at::addmm_out(g, xproj.select(0, t), h_cur, w_t);
    lstm_fwd_step(g, c_prev, cells.select(0, t), y.select(0, t), h_cur, h_next, lengths, t);
    c_prev = cells.select(0, t);
    std::swap(h_cur, h_next);
  }
  if (!save) return {y, h_cur, c_prev.clone(), xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_cur, c_prev.clone(), gates, cells};
}

// grad_y (T,B,H), grad_h_n, grad_c_n (B,H), w_hh (4H,H), c0 (B,H), gates, cells as saved.
// Returns dgates (T,B,4H) (pre-activation gradients), grad_h0, grad_c0 (B,H).
std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& c0, const std::optional<Tensor>& lengths_opt, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  const auto [steps, batch, hidden, lengths] = check_lstm_bwd(
      grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths_opt, gates, cells, kKernelDevice);
  KernelDeviceGuard guard(gates.device());

  Tensor dgates = at::empty_like(gates);
  Tensor dh_total = at::empty({batch, hidden}, gates.options().dtype(at::kFloat));
  Tensor dc = grad_c_n.to(at::kFloat).clone();
  Tensor rec = grad_h_n.clone();
  const auto order = time_order(steps, !reverse);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t t_prev = k == 0 ? -1 : order[k - 1];
    const int64_t before = reverse ? t + 1 : t - 1;  // the step the forward ran before t
    const Tensor c_prev = (before >= 0 && before < steps) ? cells.select(0, before) : c0;
    lstm_bwd_step(grad_y.select(0, t), rec, dh_total, gates.select(0, t), cells.select(0, t),
                  c_prev, dc, dgates.select(0, t), lengths, t, t_prev);
    at::mm_out(rec, dgates.select(0, t), w_hh);
  }
  const Tensor grad_h0 = steps > 0 ? lstm_grad_h0(rec, dh_total, lengths, order.back()) : rec;
  return {dgates, grad_h0, dc.to(gates.scalar_type())};
}

// The LSTM with a projection (proj_size P): xproj (T,B,4H), bias (4H) or undefined,
// w_hh (4H,P), w_hr (P,H), h0 (B,P), c0 (B,H). Returns y (T,B,P), h_n (B,P), c_n (B,H), gates
// (T,B,4H) activated, cells (T,B,H). Per step two products: the gates' and the projection.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_recurrence_fwd(
    const Tensor& xproj_in, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const Tensor& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths_opt, bool reverse, bool save) {
  const auto [steps, batch, hidden, lengths] =
      check_lstm_proj_fwd(xproj_in, bias, w_hh, w_hr, h0, c0, lengths_opt, kKernelDevice);
  KernelDeviceGuard guard(xproj_in.device());
  const Tensor xproj = (bias.has_value() && bias->defined()) ? xproj_in + *bias : xproj_in;

  Tensor gates = at::empty_like(xproj);
  Tensor cells = at::empty({steps, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, w_hr.size(0)}, xproj.options());
  Tensor r = at::empty({batch, hidden}, xproj.options());
  Tensor h_cur = h0.clone(), h_next = at::empty_like(h0);
  const Tensor w_t = w_hh.t(), w_hr_t = w_hr.t();
  Tensor c_prev = c0;
  for (int64_t t : time_order(steps, reverse)) {
    Tensor g = gates.select(0, t), y_t = y.select(0, t);
    at::addmm_out(g, xproj.select(0, t), h_cur, w_t);
    lstm_proj_fwd_step(g, c_prev, cells.select(0, t), r, lengths, t);
    at::mm_out(y_t, r, w_hr_t);
    hold_state_step(y_t, h_cur, h_next, lengths, t);
    c_prev = cells.select(0, t);
    std::swap(h_cur, h_next);
  }
  if (!save) return {y, h_cur, c_prev.clone(), xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_cur, c_prev.clone(), gates, cells};
}

// Its backward: grad_y (T,B,P), grad_h_n (B,P), grad_c_n (B,H), w_hh (4H,P), w_hr (P,H),
// c0 (B,H), gates and cells as saved. Returns dgates (T,B,4H), dh_steps (T,B,P) (the
// gradient of each step's projected state, zero past a row's end: the gradient of W_hr is
// dh_steps^T @ (o * tanh(c)) over all steps), grad_h0 (B,P), grad_c0 (B,H).
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_proj_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const Tensor& w_hr, const Tensor& c0, const std::optional<Tensor>& lengths_opt,
    const Tensor& gates, const Tensor& cells, bool reverse) {
  const auto [steps, batch, hidden, lengths] = check_lstm_proj_bwd(
      grad_y, grad_h_n, grad_c_n, w_hh, w_hr, c0, lengths_opt, gates, cells, kKernelDevice);
  KernelDeviceGuard guard(gates.device());

  Tensor dgates = at::empty_like(gates);
  Tensor dh_steps = at::empty_like(grad_y);
  Tensor dh_total = at::empty({batch, w_hr.size(0)}, gates.options().dtype(at::kFloat));
  Tensor dr = at::empty({batch, hidden}, gates.options());
  Tensor dc = grad_c_n.to(at::kFloat).clone();
  Tensor rec = grad_h_n.clone();
  const auto order = time_order(steps, !reverse);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t t_prev = k == 0 ? -1 : order[k - 1];
    const int64_t before = reverse ? t + 1 : t - 1;
    const Tensor c_prev = (before >= 0 && before < steps) ? cells.select(0, before) : c0;
    Tensor dh_t = dh_steps.select(0, t), dg = dgates.select(0, t);
    proj_dh_step(grad_y.select(0, t), rec, dh_total, dh_t, lengths, t, t_prev);
    at::mm_out(dr, dh_t, w_hr);
    lstm_proj_bwd_step(dr, gates.select(0, t), cells.select(0, t), c_prev, dc, dg, lengths, t);
    at::mm_out(rec, dg, w_hh);
  }
  const Tensor grad_h0 = steps > 0 ? lstm_grad_h0(rec, dh_total, lengths, order.back()) : rec;
  return {dgates, dh_steps, grad_h0, dc.to(gates.scalar_type())};
}

// xproj (T,B,3H) = x W_ih^T; b_ih, b_hh (3H) or undefined; w_hh (3H,H); h0 (B,H).
// Returns y (T,B,H), h_n (B,H), gates (T,B,3H) activated r,z,n, hidden_n (T,B,H).
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_recurrence_fwd(
    const Tensor& xproj, const std::optional<Tensor>& b_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths_opt, bool reverse, bool save) {
  const auto [steps, batch, hidden, lengths] =
      check_gru_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths_opt, kKernelDevice);
  const bool has_bias = b_hh.has_value() && b_hh->defined();
  KernelDeviceGuard guard(xproj.device());

  Tensor gates = (b_ih.has_value() && b_ih->defined()) ? xproj + *b_ih : xproj.clone();
  Tensor hidden_n = at::empty({steps, batch, hidden}, xproj.options());
  Tensor y = at::empty({steps, batch, hidden}, xproj.options());
  Tensor hidden_gates = at::empty({batch, 3 * hidden}, xproj.options());
  Tensor h_cur = h0.clone(), h_next = at::empty_like(h0);
  const Tensor w_t = w_hh.t();
  for (int64_t t : time_order(steps, reverse)) {
    if (has_bias) {
      at::addmm_out(hidden_gates, *b_hh, h_cur, w_t);
    } else {
      at::mm_out(hidden_gates, h_cur, w_t);
    }
    gru_fwd_step(gates.select(0, t), hidden_gates, hidden_n.select(0, t), y.select(0, t), h_cur,
                 h_next, lengths, t);
    std::swap(h_cur, h_next);
  }
  if (!save) return {y, h_cur, xproj.new_empty({0}), xproj.new_empty({0})};
  return {y, h_cur, gates, hidden_n};
}

// grad_y (T,B,H), grad_h_n (B,H), w_hh (3H,H), h_prev (T,B,H) the state entering each
// step, gates and hidden_n as saved. Returns dgates_in, dgates_hid (T,B,3H), grad_h0 (B,H).
std::tuple<Tensor, Tensor, Tensor> gru_recurrence_bwd(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& w_hh, const Tensor& h_prev,
    const std::optional<Tensor>& lengths_opt, const Tensor& gates, const Tensor& hidden_n,
    bool reverse) {
  const auto [steps, batch, hidden, lengths] = check_gru_bwd(
      grad_y, grad_h_n, w_hh, h_prev, lengths_opt, gates, hidden_n, kKernelDevice);
  KernelDeviceGuard guard(gates.device());

  Tensor dgates_in = at::empty_like(gates), dgates_hid = at::empty_like(gates);
  Tensor dh_total = at::empty({batch, hidden}, gates.options().dtype(at::kFloat));
  Tensor rec = grad_h_n.clone();
  const auto order = time_order(steps, !reverse);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t t_prev = k == 0 ? -1 : order[k - 1];
    const Tensor gates_prev = gates.select(0, k == 0 ? t : t_prev);
    gru_bwd_step(grad_y.select(0, t), rec, dh_total, gates_prev, gates.select(0, t),
                 hidden_n.select(0, t), h_prev.select(0, t), dgates_in.select(0, t),
                 dgates_hid.select(0, t), lengths, t, t_prev);
    at::mm_out(rec, dgates_hid.select(0, t), w_hh);
  }
  if (steps == 0) return {dgates_in, dgates_hid, rec};
  const int64_t last = order.back();
  return {dgates_in, dgates_hid, gru_grad_h0(rec, dh_total, gates.select(0, last), lengths, last)};
}

// The Elman RNN (relu: relu, else tanh): xproj (T,B,H) = x W_ih^T; bias (H) = b_ih + b_hh or
// undefined; w_hh (H,H); h0 (B,H). Returns y (T,B,H), h_n (B,H). Each step's product goes
// straight into y[t], which the step kernel activates in place.
std::tuple<Tensor, Tensor> rnn_recurrence_fwd(const Tensor& xproj_in,
                                              const std::optional<Tensor>& bias,
                                              const Tensor& w_hh, const Tensor& h0,
                                              const std::optional<Tensor>& lengths_opt,
                                              bool reverse, bool relu) {
  const auto [steps, batch, hidden, lengths] =
      check_rnn_fwd(xproj_in, bias, w_hh, h0, lengths_opt, kKernelDevice);
  KernelDeviceGuard guard(xproj_in.device());
  const Tensor xproj = (bias.has_value() && bias->defined()) ? xproj_in + *bias : xproj_in;

  Tensor y = at::empty_like(xproj);
  Tensor h_cur = h0.clone(), h_next = at::empty_like(h0);
  const Tensor w_t = w_hh.t();
  for (int64_t t : time_order(steps, reverse)) {
    Tensor y_t = y.select(0, t);
    at::addmm_out(y_t, xproj.select(0, t), h_cur, w_t);
    rnn_fwd_step(y_t, h_cur, h_next, lengths, t, relu);
    std::swap(h_cur, h_next);
  }
  return {y, h_cur};
}

// grad_y, y (T,B,H), grad_h_n (B,H), w_hh (H,H). Returns dpre (T,B,H), the gradients of the
// pre-activations (zero past a row's end), and grad_h0 (B,H).
std::tuple<Tensor, Tensor> rnn_recurrence_bwd(const Tensor& grad_y, const Tensor& grad_h_n,
                                              const Tensor& w_hh, const Tensor& y,
                                              const std::optional<Tensor>& lengths_opt,
                                              bool reverse, bool relu) {
  const auto [steps, batch, hidden, lengths] =
      check_rnn_bwd(grad_y, grad_h_n, w_hh, y, lengths_opt, kKernelDevice);
  KernelDeviceGuard guard(y.device());

  Tensor dpre = at::empty_like(y);
  Tensor dh_total = at::empty({batch, hidden}, y.options().dtype(at::kFloat));
  Tensor rec = grad_h_n.clone();
  const auto order = time_order(steps, !reverse);
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t t = order[k];
    const int64_t t_prev = k == 0 ? -1 : order[k - 1];
    rnn_bwd_step(grad_y.select(0, t), rec, dh_total, y.select(0, t), dpre.select(0, t), lengths,
                 t, t_prev, relu);
    at::mm_out(rec, dpre.select(0, t), w_hh);
  }
  const Tensor grad_h0 = steps > 0 ? lstm_grad_h0(rec, dh_total, lengths, order.back()) : rec;
  return {dpre, grad_h0};
}

}  // namespace fusedrnn
