// The LSTM cell's math (float32), gates i, f, g, o: one definition for the step, projection
// and persistent kernels, forward and backward.
#pragma once

#include "cell_math.cuh"

namespace fusedrnn {

struct LstmGates {
  float i, f, g, o;
};

// The activated gates from the pre-activations.
__device__ __forceinline__ LstmGates lstm_activate(float pre_i, float pre_f, float pre_g,
                                                   float pre_o) {
  return {sigmoid(pre_i), sigmoid(pre_f), tanhf(pre_g), sigmoid(pre_o)};
}

// The new cell state c = f * c_prev + i * g (the output is o * tanh(c)).
__device__ __forceinline__ float lstm_cell_state(const LstmGates& a, float c_prev) {
  return a.f * c_prev + a.i * a.g;
}

// The pre-activation gradients of one unit of an active step and the gradient passed on to
// c_prev, from its activated gates, c_prev and c, dh (the gradient of o * tanh(c)) and dc
// (the gradient of c from later steps).
struct LstmGrads {
  float d_i, d_f, d_g, d_o, dc_prev;
};

__device__ __forceinline__ LstmGrads lstm_backward(const LstmGates& a, float c_prev, float c,
                                                   float dh, float dc) {
  const float tc = tanhf(c);
  const float dcv = dc + dh * a.o * (1.0f - tc * tc);
  return {dcv * a.g * a.i * (1.0f - a.i), dcv * c_prev * a.f * (1.0f - a.f),
          dcv * a.i * (1.0f - a.g * a.g), dh * tc * a.o * (1.0f - a.o), dcv * a.f};
}

}  // namespace fusedrnn
