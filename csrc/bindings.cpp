// fusedrnn._C: registers the CUDA kernels of the ops whose schemas fusedrnn defines in Python
// (fusedrnn/backends/cuda.py), and is importable as a Python module.
#include <Python.h>
#include <torch/library.h>

#include <tuple>

namespace fusedrnn {
using at::Tensor;
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_recurrence_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, const Tensor&, const Tensor&, bool);
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_recurrence_fwd(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const std::optional<Tensor>&, bool, bool);
std::tuple<Tensor, Tensor, Tensor> gru_recurrence_bwd(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
    const Tensor&, const Tensor&, bool);
}  // namespace fusedrnn

TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_recurrence_fwd", TORCH_FN(fusedrnn::lstm_recurrence_fwd));
  m.impl("lstm_recurrence_bwd", TORCH_FN(fusedrnn::lstm_recurrence_bwd));
  m.impl("gru_recurrence_fwd", TORCH_FN(fusedrnn::gru_recurrence_fwd));
  m.impl("gru_recurrence_bwd", TORCH_FN(fusedrnn::gru_recurrence_bwd));
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fusedrnn CUDA kernels", -1,
                               nullptr};
  return PyModule_Create(&module);
}
