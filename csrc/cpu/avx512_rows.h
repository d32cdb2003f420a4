// The forward rows with AVX-512 intrinsics (avx512_rows.cpp), each with the arguments of its
// portable template (lstm_fwd_row, gru_fwd_row, rnn_fwd_row with tanh) in float32. Call them
// only where avx512_rows(): the CPU has AVX-512F and FUSEDRNN_CPU_MATH (math_mode(), which
// raises on a value other than auto or portable) is auto; the *_forward_row dispatchers of
// the *_rows.h headers do.
#pragma once

#include <cstdint>
#include <string>

namespace fusedrnn::cpu {

std::string math_mode();
bool avx512_rows();

void lstm_fwd_row_avx512(const float* xg, const float* hg, const float* bias, float* g,
                         int64_t xs, int64_t hs, const float* c_prev, float* cell, float* y,
                         float* h_next, int64_t n);
// The LSTM's forward row for the bfloat16 loop (lstm_bf16_cpu.cpp), its conversions inside:
// gate k of the units at xg + k * xs (bfloat16), hg + k * hs and bias + k * bs (float32);
// c_prev read and c_out written in float32; y and h_next written in bfloat16; where g and
// cell are not null, the activated gates (g + k * gs) and c written in bfloat16 too.
void lstm_fwd_row_bf16_avx512(const uint16_t* xg, int64_t xs, const float* hg, int64_t hs,
                              const float* bias, int64_t bs, uint16_t* g, int64_t gs,
                              const float* c_prev, float* c_out, uint16_t* cell, uint16_t* y,
                              uint16_t* h_next, int64_t n);
void gru_fwd_row_avx512(const float* xg, const float* b_ih, const float* hg, float* g,
                        const float* b_hh, const float* h_prev, float* hidden_n, float* y,
                        float* h_next, int64_t xs, int64_t hs, int64_t n);
void rnn_tanh_fwd_row_avx512(const float* xg, const float* hg, const float* bias, float* y,
                             float* h_next, int64_t hidden);

}  // namespace fusedrnn::cpu
