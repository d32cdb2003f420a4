// The step kernels for float: one translation unit per dtype, so they build in parallel.
#include "gru_kernels.cuh"
#include "lstm_kernels.cuh"
#include "lstm_proj_kernels.cuh"
#include "rnn_kernels.cuh"
#include "typed_launchers.h"

namespace fusedrnn {
FUSEDRNN_INSTANTIATE_STEP_LAUNCHERS(float)
}  // namespace fusedrnn
