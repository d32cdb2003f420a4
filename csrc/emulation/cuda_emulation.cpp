// fusedrnn._cuda_emulation: the cuda backend's step kernels and time loops for CPU tensors,
// so that tests run them on machines without a GPU. The same source as fusedrnn._C's
// stepwise path (csrc/*_kernels.cuh, recurrence.cpp, step_launchers.cpp), compiled by the
// host C++ compiler with FUSEDRNN_HOST_EMULATION: each kernel launch runs its threads one
// after the other (csrc/elementwise_launch.cuh), each product is ATen's on the CPU. One
// translation unit, which includes those sources. Its ops are the stepwise recurrence ops
// in the namespace fusedrnn_emulated, whose schemas fusedrnn/backends/cuda_emulation.py
// defines. setup.py builds it with hidden symbols: its fusedrnn:: functions never meet
// fusedrnn._C's in one process.
#include <Python.h>
#include <torch/library.h>

#include "../gru_kernels.cuh"
#include "../lstm_kernels.cuh"
#include "../lstm_proj_kernels.cuh"
#include "../rnn_kernels.cuh"
#include "../recurrence.cpp"
#include "../step_launchers.cpp"

TORCH_LIBRARY_IMPL(fusedrnn_emulated, CPU, m) {
  m.impl("lstm_recurrence_fwd", TORCH_FN(fusedrnn::lstm_recurrence_fwd));
  m.impl("lstm_recurrence_bwd", TORCH_FN(fusedrnn::lstm_recurrence_bwd));
  m.impl("lstm_proj_recurrence_fwd", TORCH_FN(fusedrnn::lstm_proj_recurrence_fwd));
  m.impl("lstm_proj_recurrence_bwd", TORCH_FN(fusedrnn::lstm_proj_recurrence_bwd));
  m.impl("gru_recurrence_fwd", TORCH_FN(fusedrnn::gru_recurrence_fwd));
  m.impl("gru_recurrence_bwd", TORCH_FN(fusedrnn::gru_recurrence_bwd));
  m.impl("rnn_recurrence_fwd", TORCH_FN(fusedrnn::rnn_recurrence_fwd));
  m.impl("rnn_recurrence_bwd", TORCH_FN(fusedrnn::rnn_recurrence_bwd));
}

PyMODINIT_FUNC PyInit__cuda_emulation(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_emulation",
                               "fusedrnn's CUDA step kernels, emulated on the CPU", -1, nullptr};
  return PyModule_Create(&module);
}
