// The step launchers of kernels.h: dispatch on the dtype to the typed launchers, which
// kernels_<dtype>.cu instantiate.
#include "kernels.h"
#include "typed_launchers.h"

namespace fusedrnn {

void lstm_fwd_step(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& cell,
                   const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                   const at::Tensor& lengths, int64_t t) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "lstm_fwd_step", [&] {
    lstm_fwd_step_typed<scalar_t>(gates, c_prev, cell, y, h_prev, h_next, lengths, t);
  });
}

void lstm_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                   const at::Tensor& gates, const at::Tensor& cell, const at::Tensor& c_prev,
                   const at::Tensor& dc, const at::Tensor& dgates, const at::Tensor& lengths,
                   int64_t t, int64_t t_prev) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "lstm_bwd_step", [&] {
    lstm_bwd_step_typed<scalar_t>(grad_y, rec, dh_total, gates, cell, c_prev, dc, dgates, lengths,
        t, t_prev);
  });
}

void gru_fwd_step(const at::Tensor& gates, const at::Tensor& hidden_gates,
                  const at::Tensor& hidden_n, const at::Tensor& y, const at::Tensor& h_prev,
                  const at::Tensor& h_next, const at::Tensor& lengths, int64_t t) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "gru_fwd_step", [&] {
    gru_fwd_step_typed<scalar_t>(gates, hidden_gates, hidden_n, y, h_prev, h_next, lengths, t);
  });
}

void gru_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& gates_prev, const at::Tensor& gates,
                  const at::Tensor& hidden_n, const at::Tensor& h_prev,
                  const at::Tensor& dgates_in, const at::Tensor& dgates_hid,
                  const at::Tensor& lengths, int64_t t, int64_t t_prev) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "gru_bwd_step", [&] {
    gru_bwd_step_typed<scalar_t>(grad_y, rec, dh_total, gates_prev, gates, hidden_n, h_prev,
        dgates_in, dgates_hid, lengths, t, t_prev);
  });
}

void lstm_proj_fwd_step(const at::Tensor& gates, const at::Tensor& c_prev,
                        const at::Tensor& cell, const at::Tensor& r, const at::Tensor& lengths,
                        int64_t t) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "lstm_proj_fwd_step", [&] {
    lstm_proj_fwd_step_typed<scalar_t>(gates, c_prev, cell, r, lengths, t);
  });
}

void hold_state_step(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                     const at::Tensor& lengths, int64_t t) {
  FUSEDRNN_DISPATCH(y.scalar_type(), "hold_state_step", [&] {
    hold_state_step_typed<scalar_t>(y, h_prev, h_next, lengths, t);
  });
}

void proj_dh_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& dh_step, const at::Tensor& lengths, int64_t t,
                  int64_t t_prev) {
  FUSEDRNN_DISPATCH(rec.scalar_type(), "proj_dh_step", [&] {
    proj_dh_step_typed<scalar_t>(grad_y, rec, dh_total, dh_step, lengths, t, t_prev);
  });
}

void lstm_proj_bwd_step(const at::Tensor& dr, const at::Tensor& gates, const at::Tensor& cell,
                        const at::Tensor& c_prev, const at::Tensor& dc, const at::Tensor& dgates,
                        const at::Tensor& lengths, int64_t t) {
  FUSEDRNN_DISPATCH(gates.scalar_type(), "lstm_proj_bwd_step", [&] {
    lstm_proj_bwd_step_typed<scalar_t>(dr, gates, cell, c_prev, dc, dgates, lengths, t);
  });
}

void rnn_fwd_step(const at::Tensor& y, const at::Tensor& h_prev, const at::Tensor& h_next,
                  const at::Tensor& lengths, int64_t t, bool relu) {
  FUSEDRNN_DISPATCH(y.scalar_type(), "rnn_fwd_step", [&] {
    rnn_fwd_step_typed<scalar_t>(y, h_prev, h_next, lengths, t, relu);
  });
}

void rnn_bwd_step(const at::Tensor& grad_y, const at::Tensor& rec, const at::Tensor& dh_total,
                  const at::Tensor& y, const at::Tensor& dpre, const at::Tensor& lengths,
                  int64_t t, int64_t t_prev, bool relu) {
  FUSEDRNN_DISPATCH(y.scalar_type(), "rnn_bwd_step", [&] {
    rnn_bwd_step_typed<scalar_t>(grad_y, rec, dh_total, y, dpre, lengths, t, t_prev, relu);
  });
}

}  // namespace fusedrnn
