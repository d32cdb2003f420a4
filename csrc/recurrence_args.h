// Argument checks of the ops fusedrnn::{lstm,gru,rnn}_recurrence_{fwd,bwd}, shared by their CUDA
// (csrc/recurrence.cpp) and CPU (csrc/cpu/) kernels, and the helpers of their time loops.
// Each check names the argument and the backend ("fusedrnn cuda backend" / "... cpu ...").
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace fusedrnn {

// The sizes every recurrence op reads from its arguments, and lengths (undefined: all
// steps of every row are active).
struct RecurrenceSizes {
  int64_t steps, batch, hidden;
  at::Tensor lengths;
};

// A literal: the checks below run on every op call, and their messages are built only
// where one fails.
inline const char* backend_of(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? "fusedrnn cuda backend" : "fusedrnn cpu backend";
}

inline std::vector<int64_t> time_order(int64_t steps, bool reverse) {
  std::vector<int64_t> order(steps);
  for (int64_t k = 0; k < steps; ++k) order[k] = reverse ? steps - 1 - k : k;
  return order;
}

// `lead` is the op's first tensor: its device type must be `device`, and every other
// tensor must share its device and dtype.
inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& lead,
                         int64_t dim, c10::DeviceType device) {
  const char* who = backend_of(device);
  TORCH_CHECK(t.device().type() == device, who, ": ", name, " must be a ",
              c10::DeviceTypeName(device), " tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == lead.device(), who, ": ", name, " is on ", t.device(),
              " but the input is on ", lead.device());
  TORCH_CHECK(t.scalar_type() == lead.scalar_type(), who, ": ", name, " has dtype ",
              t.scalar_type(), ", expected ", lead.scalar_type());
  TORCH_CHECK(t.dim() == dim, who, ": ", name, " must be ", dim, "-D, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), who, ": ", name, " must be contiguous");
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected,
                        c10::DeviceType device) {
  TORCH_CHECK(t.sizes() == expected, backend_of(device), ": ", name, " should have shape ",
              expected, ", got ", t.sizes());
}

inline void check_argument(const at::Tensor& t, const char* name, const at::Tensor& lead,
                           at::IntArrayRef expected, c10::DeviceType device) {
  check_tensor(t, name, lead, static_cast<int64_t>(expected.size()), device);
  check_shape(t, name, expected, device);
}

inline at::Tensor checked_lengths(const std::optional<at::Tensor>& lengths,
                                  const at::Tensor& lead, int64_t batch,
                                  c10::DeviceType device) {
  if (!lengths.has_value() || !lengths->defined()) return at::Tensor();
  TORCH_CHECK(lengths->device() == lead.device(), backend_of(device), ": lengths must be on ",
              lead.device(), ", got ", lengths->device());
  TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                  lengths->size(0) == batch && lengths->is_contiguous(),
              backend_of(device), ": lengths must be a contiguous int64 tensor of shape (",
              batch, "), got ", lengths->scalar_type(), " ", lengths->sizes());
  return *lengths;
}

// The sizes an op reads from its leading tensor `lead` (T,B,G) and w_hh (G,H), G = gates x H,
// both checked; lengths comes with them.
inline RecurrenceSizes lead_sizes(const at::Tensor& lead, const char* lead_name,
                                  const at::Tensor& w_hh, int64_t gates,
                                  const std::optional<at::Tensor>& lengths,
                                  c10::DeviceType device) {
  check_tensor(lead, lead_name, lead, 3, device);
  check_tensor(w_hh, "w_hh", lead, 2, device);
  const int64_t steps = lead.size(0), batch = lead.size(1), hidden = w_hh.size(1);
  check_shape(w_hh, "w_hh", {gates * hidden, hidden}, device);
  check_shape(lead, lead_name, {steps, batch, gates * hidden}, device);
  return {steps, batch, hidden, checked_lengths(lengths, lead, batch, device)};
}

// xproj (T,B,4H), bias (4H) or undefined, w_hh (4H,H), h0, c0 (B,H).
inline RecurrenceSizes check_lstm_fwd(const at::Tensor& xproj,
                                      const std::optional<at::Tensor>& bias,
                                      const at::Tensor& w_hh, const at::Tensor& h0,
                                      const at::Tensor& c0,
                                      const std::optional<at::Tensor>& lengths,
                                      c10::DeviceType device) {
  const RecurrenceSizes sizes = lead_sizes(xproj, "xproj", w_hh, 4, lengths, device);
  const int64_t batch = sizes.batch, hidden = sizes.hidden;
  if (bias.has_value() && bias->defined()) check_argument(*bias, "bias", xproj, {4 * hidden}, device);
  check_argument(h0, "h0", xproj, {batch, hidden}, device);
  check_argument(c0, "c0", xproj, {batch, hidden}, device);
  return sizes;
}

// grad_y, cells (T,B,H), grad_h_n, grad_c_n, c0 (B,H), w_hh (4H,H), gates (T,B,4H).
inline RecurrenceSizes check_lstm_bwd(const at::Tensor& grad_y, const at::Tensor& grad_h_n,
                                      const at::Tensor& grad_c_n, const at::Tensor& w_hh,
                                      const at::Tensor& c0,
                                      const std::optional<at::Tensor>& lengths,
                                      const at::Tensor& gates, const at::Tensor& cells,
                                      c10::DeviceType device) {
  const RecurrenceSizes sizes = lead_sizes(gates, "gates", w_hh, 4, lengths, device);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  check_argument(grad_y, "grad_y", gates, {steps, batch, hidden}, device);
  check_argument(cells, "cells", gates, {steps, batch, hidden}, device);
  check_argument(grad_h_n, "grad_h_n", gates, {batch, hidden}, device);
  check_argument(grad_c_n, "grad_c_n", gates, {batch, hidden}, device);
  check_argument(c0, "c0", gates, {batch, hidden}, device);
  return sizes;
}

// As lead_sizes for the LSTM with a projection w_hr (P,H): lead (T,B,4H), w_hh (4H,P), both
// checked with w_hr; the sizes' hidden is H.
inline RecurrenceSizes projected_lead_sizes(const at::Tensor& lead, const char* lead_name,
                                            const at::Tensor& w_hh, const at::Tensor& w_hr,
                                            const std::optional<at::Tensor>& lengths,
                                            c10::DeviceType device) {
  check_tensor(lead, lead_name, lead, 3, device);
  check_tensor(w_hr, "w_hr", lead, 2, device);
  const int64_t steps = lead.size(0), batch = lead.size(1);
  const int64_t state = w_hr.size(0), hidden = w_hr.size(1);
  check_shape(lead, lead_name, {steps, batch, 4 * hidden}, device);
  check_argument(w_hh, "w_hh", lead, {4 * hidden, state}, device);
  return {steps, batch, hidden, checked_lengths(lengths, lead, batch, device)};
}

// The LSTM with a projection of the state to P = w_hr.size(0) features (proj_size), CPU
// kernels only: xproj (T,B,4H), bias (4H) or undefined, w_hh (4H,P), w_hr (P,H), h0 (B,P),
// c0 (B,H). The sizes' hidden is H.
inline RecurrenceSizes check_lstm_proj_fwd(const at::Tensor& xproj,
                                           const std::optional<at::Tensor>& bias,
                                           const at::Tensor& w_hh, const at::Tensor& w_hr,
                                           const at::Tensor& h0, const at::Tensor& c0,
                                           const std::optional<at::Tensor>& lengths,
                                           c10::DeviceType device) {
  const RecurrenceSizes sizes = projected_lead_sizes(xproj, "xproj", w_hh, w_hr, lengths, device);
  const int64_t batch = sizes.batch, hidden = sizes.hidden, state = w_hr.size(0);
  if (bias.has_value() && bias->defined()) check_argument(*bias, "bias", xproj, {4 * hidden}, device);
  check_argument(h0, "h0", xproj, {batch, state}, device);
  check_argument(c0, "c0", xproj, {batch, hidden}, device);
  return sizes;
}

// Its backward: grad_y (T,B,P), grad_h_n (B,P), grad_c_n, c0 (B,H), w_hh (4H,P), w_hr (P,H),
// gates (T,B,4H), cells (T,B,H). The sizes' hidden is H.
inline RecurrenceSizes check_lstm_proj_bwd(const at::Tensor& grad_y, const at::Tensor& grad_h_n,
                                           const at::Tensor& grad_c_n, const at::Tensor& w_hh,
                                           const at::Tensor& w_hr, const at::Tensor& c0,
                                           const std::optional<at::Tensor>& lengths,
                                           const at::Tensor& gates, const at::Tensor& cells,
                                           c10::DeviceType device) {
  const RecurrenceSizes sizes = projected_lead_sizes(gates, "gates", w_hh, w_hr, lengths, device);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  const int64_t state = w_hr.size(0);
  check_argument(grad_y, "grad_y", gates, {steps, batch, state}, device);
  check_argument(cells, "cells", gates, {steps, batch, hidden}, device);
  check_argument(grad_h_n, "grad_h_n", gates, {batch, state}, device);
  check_argument(grad_c_n, "grad_c_n", gates, {batch, hidden}, device);
  check_argument(c0, "c0", gates, {batch, hidden}, device);
  return sizes;
}

// xproj (T,B,3H), b_ih (3H) or undefined, w_hh (3H,H), b_hh (3H) or undefined, h0 (B,H).
inline RecurrenceSizes check_gru_fwd(const at::Tensor& xproj,
                                     const std::optional<at::Tensor>& b_ih,
                                     const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                                     const std::optional<at::Tensor>& lengths,
                                     c10::DeviceType device) {
  const RecurrenceSizes sizes = lead_sizes(xproj, "xproj", w_hh, 3, lengths, device);
  const int64_t batch = sizes.batch, hidden = sizes.hidden;
  check_argument(h0, "h0", xproj, {batch, hidden}, device);
  if (b_ih.has_value() && b_ih->defined()) check_argument(*b_ih, "b_ih", xproj, {3 * hidden}, device);
  if (b_hh.has_value() && b_hh->defined()) check_argument(*b_hh, "b_hh", xproj, {3 * hidden}, device);
  return sizes;
}

// grad_y, h_prev, hidden_n (T,B,H), grad_h_n (B,H), w_hh (3H,H), gates (T,B,3H); h_prev's
// name in the errors is h_prev_name (gru_bptt passes y in its place).
inline RecurrenceSizes check_gru_bwd(const at::Tensor& grad_y, const at::Tensor& grad_h_n,
                                     const at::Tensor& w_hh, const at::Tensor& h_prev,
                                     const std::optional<at::Tensor>& lengths,
                                     const at::Tensor& gates, const at::Tensor& hidden_n,
                                     c10::DeviceType device, const char* h_prev_name = "h_prev") {
  const RecurrenceSizes sizes = lead_sizes(gates, "gates", w_hh, 3, lengths, device);
  const int64_t steps = sizes.steps, batch = sizes.batch, hidden = sizes.hidden;
  check_argument(grad_y, "grad_y", gates, {steps, batch, hidden}, device);
  check_argument(h_prev, h_prev_name, gates, {steps, batch, hidden}, device);
  check_argument(hidden_n, "hidden_n", gates, {steps, batch, hidden}, device);
  check_argument(grad_h_n, "grad_h_n", gates, {batch, hidden}, device);
  return sizes;
}

// xproj (T,B,H), bias (H) or undefined, w_hh (H,H), h0 (B,H).
inline RecurrenceSizes check_rnn_fwd(const at::Tensor& xproj,
                                     const std::optional<at::Tensor>& bias,
                                     const at::Tensor& w_hh, const at::Tensor& h0,
                                     const std::optional<at::Tensor>& lengths,
                                     c10::DeviceType device) {
  const RecurrenceSizes sizes = lead_sizes(xproj, "xproj", w_hh, 1, lengths, device);
  if (bias.has_value() && bias->defined()) check_argument(*bias, "bias", xproj, {sizes.hidden}, device);
  check_argument(h0, "h0", xproj, {sizes.batch, sizes.hidden}, device);
  return sizes;
}

// grad_y, y (T,B,H), grad_h_n (B,H), w_hh (H,H).
inline RecurrenceSizes check_rnn_bwd(const at::Tensor& grad_y, const at::Tensor& grad_h_n,
                                     const at::Tensor& w_hh, const at::Tensor& y,
                                     const std::optional<at::Tensor>& lengths,
                                     c10::DeviceType device) {
  const RecurrenceSizes sizes = lead_sizes(y, "y", w_hh, 1, lengths, device);
  check_argument(grad_y, "grad_y", y, {sizes.steps, sizes.batch, sizes.hidden}, device);
  check_argument(grad_h_n, "grad_h_n", y, {sizes.batch, sizes.hidden}, device);
  return sizes;
}

// The extra arguments of a CPU *_bptt op, which also computes the input and weight
// gradients: x (T,B,I) and w_ih (G,I) of the forward, G = gates x H.
inline void check_bptt_inputs(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& lead,
                              const RecurrenceSizes& sizes, int64_t gates,
                              c10::DeviceType device) {
  check_tensor(x, "x", lead, 3, device);
  check_shape(x, "x", {sizes.steps, sizes.batch, x.size(2)}, device);
  check_argument(w_ih, "w_ih", lead, {gates * sizes.hidden, x.size(2)}, device);
}

// Rows whose step t is active, as a (B, 1) bool mask; every row when lengths is undefined.
inline at::Tensor active_rows(const at::Tensor& lengths, int64_t t, const at::Tensor& like) {
  if (!lengths.defined()) return at::ones({like.size(0), 1}, like.options().dtype(at::kBool));
  return lengths.gt(t).unsqueeze(1);
}

// The gradient of h0 of an LSTM backward whose time loop ended at step `last`: rec, the
// gradient through that step's gates (dgates[last] @ W_hh), on rows where the step was
// active, else dh_total (float32), the gradient carried past it.
inline at::Tensor lstm_grad_h0(const at::Tensor& rec, const at::Tensor& dh_total,
                               const at::Tensor& lengths, int64_t last) {
  if (!lengths.defined()) return rec;
  return at::where(active_rows(lengths, last, rec), rec, dh_total.to(rec.dtype()));
}

// The same for the GRU, whose h0 also reaches h_1 directly through z: gates_last is the
// saved (B, 3H) gates of step `last`, rec = dgates_hid[last] @ W_hh.
inline at::Tensor gru_grad_h0(const at::Tensor& rec, const at::Tensor& dh_total,
                              const at::Tensor& gates_last, const at::Tensor& lengths,
                              int64_t last) {
  const int64_t hidden = rec.size(1);
  const at::Tensor z_last = gates_last.narrow(1, hidden, hidden).to(at::kFloat);
  at::Tensor grad_h0 = rec.to(at::kFloat) + dh_total * z_last;
  if (lengths.defined()) {
    grad_h0 = at::where(active_rows(lengths, last, rec), grad_h0, dh_total);
  }
  return grad_h0.to(rec.scalar_type());
}

}  // namespace fusedrnn
