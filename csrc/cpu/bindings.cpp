// fusedrnn._cpu: registers the CPU kernels of the recurrence ops whose schemas fusedrnn
// defines in Python (fusedrnn/backends/recurrence.py), and is importable as a Python module.
#include <Python.h>
#include <torch/library.h>

#include "recurrence_cpu.h"

TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_recurrence_fwd", TORCH_FN(fusedrnn::cpu::lstm_recurrence_fwd));
  m.impl("lstm_recurrence_bwd", TORCH_FN(fusedrnn::cpu::lstm_recurrence_bwd));
  m.impl("lstm_proj_recurrence_fwd", TORCH_FN(fusedrnn::cpu::lstm_proj_recurrence_fwd));
  m.impl("gru_recurrence_fwd", TORCH_FN(fusedrnn::cpu::gru_recurrence_fwd));
  m.impl("gru_recurrence_bwd", TORCH_FN(fusedrnn::cpu::gru_recurrence_bwd));
  m.impl("rnn_recurrence_fwd", TORCH_FN(fusedrnn::cpu::rnn_recurrence_fwd));
  m.impl("rnn_recurrence_bwd", TORCH_FN(fusedrnn::cpu::rnn_recurrence_bwd));
  m.impl("lstm_bptt", TORCH_FN(fusedrnn::cpu::lstm_bptt));
  m.impl("gru_bptt", TORCH_FN(fusedrnn::cpu::gru_bptt));
  m.impl("rnn_bptt", TORCH_FN(fusedrnn::cpu::rnn_bptt));
  m.impl("input_projection", TORCH_FN(fusedrnn::cpu::input_projection));
}

extern "C" PyObject* PyInit__cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "fusedrnn CPU kernels", -1,
                               nullptr};
  return PyModule_Create(&module);
}
