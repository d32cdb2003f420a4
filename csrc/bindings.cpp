// fusedrnn._C: registers the CUDA kernels of the ops whose schemas fusedrnn defines in Python
// (fusedrnn/backends/recurrence.py), and is importable as a Python module with three
// functions for the planner of the persistent kernels (fusedrnn/backends/cuda_plan.py) and
// one for benchmarks/barrier_latency.py.
#include <Python.h>
#include <torch/library.h>

#include <exception>
#include <string>
#include <tuple>

#include "cuda_ops.h"
#include "persistent/slice_layout.h"


TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) { FUSEDRNN_IMPLEMENT_CUDA_OPS(m); }

namespace {

// persistent_smem_bytes(gates, units, hidden, itemsize, backward, cluster) -> int: the
// shared memory of one block of a persistent kernel (persistent/slice_layout.h).
PyObject* persistent_smem_bytes(PyObject*, PyObject* args) {
  int gates = 0, units = 0, itemsize = 0, backward = 0, cluster = 0;
  long long hidden = 0;
  if (!PyArg_ParseTuple(args, "iiLipp", &gates, &units, &hidden, &itemsize, &backward,
                        &cluster)) {
    return nullptr;
  }
  const auto layout = fusedrnn::persistent::slice_layout(gates, units, hidden, itemsize,
                                                         backward != 0, cluster != 0);
  return PyLong_FromLongLong(layout.bytes());
}

bool parse_dtype(const char* dtype, at::ScalarType* type) {
  const std::string name(dtype);
  if (name != "float32" && name != "float16" && name != "bfloat16") {
    PyErr_SetString(PyExc_ValueError, "dtype must be float32, float16 or bfloat16");
    return false;
  }
  *type = name == "float32" ? at::kFloat : name == "float16" ? at::kHalf : at::kBFloat16;
  return true;
}

PyObject* occupancy(const char* kernel, const char* dtype, long long smem, int cluster,
                    int device) {
  at::ScalarType type;
  if (!parse_dtype(dtype, &type)) return nullptr;
  try {
    return PyLong_FromLong(fusedrnn::persistent_occupancy(kernel, type, smem, cluster, device));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// persistent_blocks_per_sm(kernel, dtype, smem, device) -> int: how many blocks of the kernel
// (lstm_fwd, lstm_bwd, gru_fwd, gru_bwd) for dtype (float32, float16, bfloat16) with smem
// bytes of shared memory one multiprocessor of CUDA device `device` holds at once (-1: no
// code of it for compute capability 8.0+).
PyObject* persistent_blocks_per_sm(PyObject*, PyObject* args) {
  const char* kernel = nullptr;
  const char* dtype = nullptr;
  long long smem = 0;
  int device = 0;
  if (!PyArg_ParseTuple(args, "ssLi", &kernel, &dtype, &smem, &device)) return nullptr;
  return occupancy(kernel, dtype, smem, 0, device);
}

// persistent_max_clusters(kernel, dtype, smem, cluster, device) -> int: how many clusters of
// `cluster` such blocks the device holds at once (0: it cannot place one; -1: no sm_90 code).
PyObject* persistent_max_clusters(PyObject*, PyObject* args) {
  const char* kernel = nullptr;
  const char* dtype = nullptr;
  long long smem = 0;
  int cluster = 0, device = 0;
  if (!PyArg_ParseTuple(args, "ssLii", &kernel, &dtype, &smem, &cluster, &device)) {
    return nullptr;
  }
  if (cluster < 1) {
    PyErr_SetString(PyExc_ValueError, "cluster must be at least 1");
    return nullptr;
  }
  return occupancy(kernel, dtype, smem, cluster, device);
}

// barrier_latency_us(kind, blocks, cluster, iterations, repeats) -> float: microseconds per
// grid ("grid") or cluster ("cluster") barrier on the current device
// (persistent/barrier_bench.cu).
PyObject* barrier_latency_us(PyObject*, PyObject* args) {
  const char* kind = nullptr;
  int blocks = 0, cluster = 0, iterations = 0, repeats = 0;
  if (!PyArg_ParseTuple(args, "siiii", &kind, &blocks, &cluster, &iterations, &repeats)) {
    return nullptr;
  }
  try {
    return PyFloat_FromDouble(
        fusedrnn::persistent::barrier_latency_us(kind, blocks, cluster, iterations, repeats));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

PyMethodDef methods[] = {
    {"persistent_smem_bytes", persistent_smem_bytes, METH_VARARGS, nullptr},
    {"persistent_blocks_per_sm", persistent_blocks_per_sm, METH_VARARGS, nullptr},
    {"persistent_max_clusters", persistent_max_clusters, METH_VARARGS, nullptr},
    {"barrier_latency_us", barrier_latency_us, METH_VARARGS, nullptr},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fusedrnn CUDA kernels", -1,
                               methods};
  return PyModule_Create(&module);
}
