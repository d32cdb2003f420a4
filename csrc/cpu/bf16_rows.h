// Row conversions of the bfloat16 time loops (lstm_bf16_cpu.cpp, gru_bf16_cpu.cpp,
// rnn_bf16_cpu.cpp): each widens its bfloat16 rows to float32, runs the float32 cell of its
// *_rows.h on them and rounds what it stores. The conversions are loops of their own: in a
// cell's loop a 16-bit load or store halved the vector width GCC chose, and the LSTM's row
// took 7.5 ns per unit instead of 3.9.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fusedrnn::cpu {

// out (n, float32) = in (n, bfloat16).
void widen_row(const uint16_t* in, float* out, int64_t n);

// out (n, bfloat16) = in (n, float32), rounded to the nearest even.
void narrow_row(const float* in, uint16_t* out, int64_t n);

// The 16 bits of a bfloat16 tensor's data.
template <typename T>
T* bits(const at::Tensor& tensor) {
  return reinterpret_cast<T*>(tensor.data_ptr<at::BFloat16>());
}

}  // namespace fusedrnn::cpu
