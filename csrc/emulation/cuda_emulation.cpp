// fusedrnn._cuda_emulation: the cuda backend's kernels and time loops for CPU tensors, so
// that tests run them on machines without a GPU. The same source as fusedrnn._C's
// (csrc/*_kernels.cuh, recurrence.cpp, step_launchers.cpp, persistent/), compiled by the host
// C++ compiler with FUSEDRNN_HOST_EMULATION: a step kernel's launch runs its threads one
// after the other (csrc/elementwise_launch.cuh), a persistent kernel's runs them all at
// once on host threads (block_threads.h, wmma.h, persistent_launch.h); the stepwise loops'
// products are ATen's on the CPU. One translation unit, which includes those sources. Its
// ops are the CUDA extension's in the namespace fusedrnn_emulated, whose schemas
// fusedrnn/backends/cuda_emulation.py defines. setup.py builds it with hidden symbols: its
// fusedrnn:: functions never meet fusedrnn._C's in one process.
#include <Python.h>
#include <torch/library.h>

#include "../gru_kernels.cuh"
#include "../lstm_kernels.cuh"
#include "../lstm_proj_kernels.cuh"
#include "../rnn_kernels.cuh"
#include "../recurrence.cpp"
#include "../step_launchers.cpp"
#include "persistent_launch.h"
#include "../persistent/persistent_ops.cpp"

TORCH_LIBRARY_IMPL(fusedrnn_emulated, CPU, m) { FUSEDRNN_IMPLEMENT_CUDA_OPS(m); }

PyMODINIT_FUNC PyInit__cuda_emulation(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda_emulation",
                               "fusedrnn's CUDA step kernels, emulated on the CPU", -1, nullptr};
  return PyModule_Create(&module);
}
