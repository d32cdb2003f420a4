// The cpu backend's forward and backward kernels as plain Python functions of
// fusedrnn._cpu, called instead of their ops outside the profiler (fusedrnn/backends/cpu.py:
// the profiler's trace keeps the ops). torch.ops' boxed call converts each argument to an
// IValue and back through the op's schema: 2-3 us of a cell's step at batch 1, hidden 128,
// where the step itself takes 5-10. What the dispatcher would do for these kernels is done
// here: the tensors' negative and conjugate bits and zero tensors resolved (the
// dispatcher's fallbacks), the kernel run below autograd. The ops (bindings.cpp) and these
// functions run the same C++ function.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fusedrnn::cpu::python_calls {

// `index` counts from 0; the message from 1, as torch's do.
[[noreturn]] inline void refuse(const char* name, size_t index, const char* expected,
                                PyObject* got) {
  TORCH_CHECK_TYPE(false, name, ": argument ", index + 1, " must be ", expected, ", not ",
                   Py_TYPE(got)->tp_name);
}

// One argument from Python, converted to the C++ parameter type it is passed as.
template <typename T>
struct Argument;

template <>
struct Argument<const at::Tensor&> {
  static at::Tensor from(PyObject* obj, const char* name, size_t index) {
    if (!THPVariable_Check(obj)) refuse(name, index, "a Tensor", obj);
    const at::Tensor& t = THPVariable_Unpack(obj);
    // The kernels read data pointers: a lazily negated or conjugated view, or a zero tensor
    // (no data), made what it stands for, as the dispatcher's fallbacks make it.
    if (t._is_zerotensor()) return at::zeros(t.sizes(), t.options());
    if (t.is_neg() || t.is_conj()) return t.resolve_neg().resolve_conj();
    return t;
  }
};

template <>
struct Argument<const std::optional<at::Tensor>&> {
  static std::optional<at::Tensor> from(PyObject* obj, const char* name, size_t index) {
    if (obj == Py_None) return std::nullopt;
    return Argument<const at::Tensor&>::from(obj, name, index);
  }
};

template <>
struct Argument<bool> {
  static bool from(PyObject* obj, const char* name, size_t index) {
    if (!PyBool_Check(obj)) refuse(name, index, "a bool", obj);
    return obj == Py_True;
  }
};

template <typename... Tensors>
PyObject* wrapped(std::tuple<Tensors...>&& results) {
  THPObjectPtr tuple(PyTuple_New(sizeof...(Tensors)));
  if (!tuple) return nullptr;
  Py_ssize_t i = 0;
  bool failed = false;
  std::apply(
      [&](auto&... tensor) {
        ((failed = failed || [&] {
            PyObject* item = THPVariable_Wrap(std::move(tensor));
            if (item == nullptr) return true;
            PyTuple_SET_ITEM(tuple.get(), i++, item);
            return false;
          }()),
         ...);
      },
      results);
  return failed ? nullptr : tuple.release();  // unfilled items are NULL: safe to release
}

template <auto Function>
struct PythonCall;

// Function(args...) from a Python call's positional arguments: each checked and converted
// with the GIL held, the function run without it (as torch.ops' calls run theirs: a
// bidirectional layer's two directions run on two threads at once), its exceptions raised
// as torch raises c10's (ValueError, TypeError, RuntimeError and the rest).
template <typename Result, typename... Params, Result (*Function)(Params...)>
struct PythonCall<Function> {
  template <size_t... I>
  static PyObject* call(const char* name, PyObject* args, std::index_sequence<I...>) {
    HANDLE_TH_ERRORS
    TORCH_CHECK_TYPE(PyTuple_GET_SIZE(args) == sizeof...(Params), name, " takes ",
                     sizeof...(Params), " arguments, got ", PyTuple_GET_SIZE(args));
    // Converted in order, each naming its position where it is refused.
    std::tuple<std::decay_t<Params>...> values{
        Argument<Params>::from(PyTuple_GET_ITEM(args, I), name, I)...};
    Result results;
    {
      pybind11::gil_scoped_release no_gil;
      const at::AutoDispatchBelowAutograd below;  // as the op layer calls the ops
      results = Function(std::get<I>(values)...);
    }
    return wrapped(std::move(results));
    END_HANDLE_TH_ERRORS
  }

  static PyObject* run(const char* name, PyObject* args) {
    return call(name, args, std::index_sequence_for<Params...>{});
  }
};

}  // namespace fusedrnn::cpu::python_calls

// A PyMethodDef entry (METH_VARARGS) running `function` through PythonCall.
#define FUSEDRNN_PYTHON_CALL(function, doc)                                              \
  {                                                                                      \
    #function,                                                                           \
        [](PyObject*, PyObject* args) -> PyObject* {                                     \
          return fusedrnn::cpu::python_calls::PythonCall<&fusedrnn::cpu::function>::run( \
              #function, args);                                                          \
        },                                                                               \
        METH_VARARGS, doc                                                                \
  }
