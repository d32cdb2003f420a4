// The cpu backend's forward of one layer and direction as one op per cell,
// fusedrnn::{lstm,gru,rnn}_forward: the input projection (input_projection.cpp), then the
// cell's time loop with its biases, returning what the op layer's forward returns. One call
// from Python where there were three (projection, bias sum, time loop): each costs its
// dispatch, a few microseconds, which is most of a step's time at batch 1, hidden 128.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "../recurrence_args.h"
#include "recurrence_cpu.h"

namespace fusedrnn::cpu {
namespace {

using at::Tensor;
using Results = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

bool given(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

void check_biases_together(const std::optional<Tensor>& b_ih,
                           const std::optional<Tensor>& b_hh) {
  TORCH_CHECK(given(b_ih) == given(b_hh), backend_of(at::kCPU),
              ": b_ih and b_hh must be given together (or neither)");
}

// b_ih + b_hh, each (G) where G = w_ih's rows, or nothing where neither is given (the call
// has no biases).
std::optional<Tensor> summed_biases(const std::optional<Tensor>& b_ih,
                                    const std::optional<Tensor>& b_hh, const Tensor& x,
                                    const Tensor& w_ih) {
  check_biases_together(b_ih, b_hh);
  if (!given(b_ih)) return std::nullopt;
  check_argument(*b_ih, "b_ih", x, {w_ih.size(0)}, at::kCPU);
  check_argument(*b_hh, "b_hh", x, {w_ih.size(0)}, at::kCPU);
  // A plain loop: at::add's TensorIterator took about a microsecond of a cell's step at
  // batch 1. The same sum in each dtype (a 16-bit one's in float, rounded once).
  Tensor sum = at::empty_like(*b_ih);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "summed_biases",
                                  [&] {
    const scalar_t* a = b_ih->const_data_ptr<scalar_t>();
    const scalar_t* b = b_hh->const_data_ptr<scalar_t>();
    scalar_t* out = sum.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0, n = sum.numel(); i < n; ++i) out[i] = a[i] + b[i];
  });
  return sum;
}

Tensor none_like(const Tensor& x) { return x.new_empty({0}); }

}  // namespace

Results lstm_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                     const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                     const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
                     const std::optional<Tensor>& lengths, bool reverse, bool save) {
  const Tensor xproj = input_projection(x, w_ih);
  const auto bias = summed_biases(b_ih, b_hh, x, w_ih);
  if (given(w_hr)) {
    return lstm_proj_recurrence_fwd(xproj, bias, w_hh, *w_hr, h0, c0, lengths, reverse, save);
  }
  return lstm_recurrence_fwd(xproj, bias, w_hh, h0, c0, lengths, reverse, save);
}

Results gru_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                    const Tensor& h0, const std::optional<Tensor>& lengths, bool reverse,
                    bool save) {
  check_biases_together(b_ih, b_hh);  // the recurrence op checks each one's shape
  const Tensor xproj = input_projection(x, w_ih);
  auto [y, h_n, gates, hidden_n] =
      gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths, reverse, save);
  return {y, h_n, none_like(x), gates, hidden_n};
}

Results rnn_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                    const Tensor& h0, const std::optional<Tensor>& lengths, bool reverse,
                    bool relu) {
  const Tensor xproj = input_projection(x, w_ih);
  const auto bias = summed_biases(b_ih, b_hh, x, w_ih);
  auto [y, h_n] = rnn_recurrence_fwd(xproj, bias, w_hh, h0, lengths, reverse, relu);
  return {y, h_n, none_like(x), none_like(x), none_like(x)};
}

}  // namespace fusedrnn::cpu
