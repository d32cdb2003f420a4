// The cpu backend's forward and backward ops as plain Python functions of fusedrnn._cpu,
// for the calls that need nothing of the dispatcher (fusedrnn/backends/cpu.py: no profiler
// recording). torch.ops' boxed call converts each argument to an IValue and back through the
// op's schema: 2-3 us of a cell's step at batch 1, hidden 128, where the step itself takes
// 5-10. The dispatcher's registrations (bindings.cpp) stay what torch.compile, the profiler
// and the tests of the ops see; both paths run the same C++ function.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fusedrnn::cpu::python_calls {

[[noreturn]] inline void refuse(const char* name, size_t index, const char* expected,
                                PyObject* got) {
  TORCH_CHECK_TYPE(false, name, ": argument ", index, " must be ", expected, ", not ",
                   Py_TYPE(got)->tp_name);
}

// One argument from Python, converted to the C++ parameter type it is passed as.
template <typename T>
struct Argument;

template <>
struct Argument<const at::Tensor&> {
  static const at::Tensor& from(PyObject* obj, const char* name, size_t index) {
    if (!THPVariable_Check(obj)) refuse(name, index, "a Tensor", obj);
    return THPVariable_Unpack(obj);
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
  PyObject* tuple = PyTuple_New(sizeof...(Tensors));
  if (tuple == nullptr) return nullptr;
  Py_ssize_t i = 0;
  bool failed = false;
  std::apply(
      [&](auto&... tensor) {
        ((failed = failed || [&] {
            PyObject* item = THPVariable_Wrap(std::move(tensor));
            if (item == nullptr) return true;
            PyTuple_SET_ITEM(tuple, i++, item);
            return false;
          }()),
         ...);
      },
      results);
  if (failed) {
    Py_DECREF(tuple);
    return nullptr;
  }
  return tuple;
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
      const at::AutoDispatchBelowAutograd below;  // where the dispatcher runs its kernels
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
