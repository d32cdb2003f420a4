// The CPU kernels of the ops fusedrnn::{lstm,gru,rnn}_recurrence_{fwd,bwd}, whose schemas are
// defined in Python (fusedrnn/backends/recurrence.py). float32 and float64, and bfloat16
// (but the projected LSTM's) where torch has a bfloat16 product (bf16_product.h); every tensor
// contiguous and on the CPU, of one dtype, except lengths: int64 (B,) or undefined (all
// steps active), step t of row b active while t < lengths[b]. Inactive steps leave the state
// unchanged and output zeros. Nothing is aliased: every result is a fresh tensor, and no
// argument is written. `reverse` runs time from T-1 down to 0. A forward without `save`
// (inference) returns the saved tensors as empty (0,) tensors and keeps only one or two
// steps of them while it runs.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fusedrnn::cpu {

// xproj (T,B,4H) = x W_ih^T; bias (4H) = b_ih + b_hh, or undefined; w_hh (4H,H); h0, c0
// (B,H). Returns y (T,B,H), h_n, c_n (B,H), gates (T,B,4H) activated i,f,g,o, cells (T,B,H).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_recurrence_fwd(
    const at::Tensor& xproj, const std::optional<at::Tensor>& bias, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    bool reverse, bool save);

// Its bfloat16 kernel (lstm_bf16_cpu.cpp), which lstm_recurrence_fwd runs for bfloat16
// tensors; bias (4H) defined, lengths null or (B,). has_bf16_gemm(): whether torch has the
// bfloat16 product it needs, oneDNN's brgemm or MKL's (bf16_product.h), and
// FUSEDRNN_CPU_GEMM is not unpacked or aten.
bool has_bf16_gemm();
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_bf16(
    const at::Tensor& xproj, const at::Tensor& bias, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0, const int64_t* lengths, bool reverse,
    bool save);
// The backward time loop of that kernel, which lstm_recurrence_bwd runs for bfloat16 tensors:
// returns dgates (T,B,4H), dh0, dc0 (B,H), in bfloat16.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_backward_bf16(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& w_hh, const at::Tensor& c0, const int64_t* lengths,
    const at::Tensor& gates, const at::Tensor& cells, bool reverse);

// The same with a projection of the state to P features (proj_size): w_hh (4H,P), w_hr
// (P,H), h0 (B,P); y (T,B,P) = (o * tanh(c)) @ w_hr^T, h_n (B,P). CPU only.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_proj_recurrence_fwd(
    const at::Tensor& xproj, const std::optional<at::Tensor>& bias, const at::Tensor& w_hh,
    const at::Tensor& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// grad_y (T,B,H), grad_h_n, grad_c_n (B,H), w_hh (4H,H), c0 (B,H), gates and cells as the
// forward returned them. Returns dgates (T,B,4H) pre-activation gradients, grad_h0, grad_c0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_recurrence_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& w_hh, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    const at::Tensor& gates, const at::Tensor& cells, bool reverse);

// xproj (T,B,3H) = x W_ih^T; b_ih, b_hh (3H) or undefined; w_hh (3H,H); h0 (B,H).
// Returns y (T,B,H), h_n (B,H), gates (T,B,3H) activated r,z,n, hidden_n (T,B,H).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_recurrence_fwd(
    const at::Tensor& xproj, const std::optional<at::Tensor>& b_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// grad_y (T,B,H), grad_h_n (B,H), w_hh (3H,H), h_prev (T,B,H) the state entering each step,
// gates and hidden_n as the forward returned them.
// Returns dgates_in, dgates_hid (T,B,3H), grad_h0 (B,H).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& w_hh,
    const at::Tensor& h_prev, const std::optional<at::Tensor>& lengths,
    const at::Tensor& gates, const at::Tensor& hidden_n, bool reverse);

// Their bfloat16 kernels (gru_bf16_cpu.cpp), which gru_recurrence_{fwd,bwd} run for
// bfloat16 tensors, as the LSTM's: b_ih, b_hh (3H) defined, lengths null or (B,); the same
// results, in bfloat16.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_bf16(
    const at::Tensor& xproj, const at::Tensor& b_ih, const at::Tensor& w_hh,
    const at::Tensor& b_hh, const at::Tensor& h0, const int64_t* lengths, bool reverse,
    bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_backward_bf16(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& w_hh,
    const at::Tensor& h_prev, const int64_t* lengths, const at::Tensor& gates,
    const at::Tensor& hidden_n, bool reverse);

// xproj (T,B,H) = x W_ih^T; bias (H) = b_ih + b_hh, or undefined; w_hh (H,H); h0 (B,H);
// relu: the activation is relu, else tanh. Returns y (T,B,H), h_n (B,H).
std::tuple<at::Tensor, at::Tensor> rnn_recurrence_fwd(
    const at::Tensor& xproj, const std::optional<at::Tensor>& bias, const at::Tensor& w_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse, bool relu);

// grad_y (T,B,H), grad_h_n (B,H), w_hh (H,H), y (T,B,H) as the forward returned it.
// Returns dpre (T,B,H) pre-activation gradients, grad_h0 (B,H).
std::tuple<at::Tensor, at::Tensor> rnn_recurrence_bwd(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& w_hh,
    const at::Tensor& y, const std::optional<at::Tensor>& lengths, bool reverse, bool relu);

// Their bfloat16 kernels (rnn_bf16_cpu.cpp), which rnn_recurrence_{fwd,bwd} run for
// bfloat16 tensors: bias (H) defined, lengths null or (B,); the same results, in bfloat16.
std::tuple<at::Tensor, at::Tensor> rnn_forward_bf16(const at::Tensor& xproj,
                                                    const at::Tensor& bias,
                                                    const at::Tensor& w_hh, const at::Tensor& h0,
                                                    const int64_t* lengths, bool reverse,
                                                    bool relu);
std::tuple<at::Tensor, at::Tensor> rnn_backward_bf16(const at::Tensor& grad_y,
                                                     const at::Tensor& grad_h_n,
                                                     const at::Tensor& w_hh, const at::Tensor& y,
                                                     const int64_t* lengths, bool reverse,
                                                     bool relu);

// fusedrnn::input_projection (CPU only): x (T,B,I) @ w_ih^T, w_ih (G,I): (T,B,G), in a
// pooled workspace.
at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih);

// The fusedrnn::{lstm,gru,rnn}_forward ops (CPU only, forward_ops.cpp): a forward above with
// its input projection, x (T,B,I) and w_ih (G,I) in place of xproj, and b_ih, b_hh (G) both
// or neither. Each returns what the op layer's forward returns: y, h_n, c_n, then the saved
// tensors (the LSTM's gates and cells, the GRU's gates and hidden_n), (0,) tensors for what
// the cell does not have.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths, bool reverse, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse, bool save);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, bool reverse, bool relu);

// The fusedrnn::*_bptt ops (CPU only): a backward above plus the gradients that are
// products over all steps, overlapped with its time loop (input_weight_grads.h). Extra
// arguments: x (T,B,I) and w_ih (G,I) of the forward; h0 (B,H) (with y, the states each step
// started from; the GRU's takes them in place of h_prev); has_bias. Returns grad_x (T,B,I), grad_w_ih (G,I), grad_w_hh
// (G,H), grad_b_ih, grad_b_hh (G, or (0,) without bias), then the initial states' gradients.
// lstm_bptt takes w_hr (P,H) or undefined and returns grad_w_hr ((0,) without) before the
// initial states' gradients.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
lstm_bptt(const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
          const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
          const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
          const std::optional<at::Tensor>& lengths, const at::Tensor& y,
          const at::Tensor& gates, const at::Tensor& cells, bool reverse, bool has_bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bptt(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, const at::Tensor& y, const at::Tensor& gates,
    const at::Tensor& hidden_n, bool reverse, bool has_bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_bptt(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, const at::Tensor& y, bool reverse, bool relu,
    bool has_bias);

}  // namespace fusedrnn::cpu
