// fusedrnn._cpu: registers the CPU kernels of the recurrence ops whose schemas fusedrnn
// defines in Python (fusedrnn/backends/recurrence.py), and is importable as a Python module
// with run_pair (fusedrnn/backends/thread_split.py) and the product paths' queries.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <Python.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <exception>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "avx512_rows.h"
#include "bf16_product.h"
#include "blas.h"
#include "mkl_threads.h"
#include "recurrence_cpu.h"
#include "prepared_cache.h"
#include "python_calls.h"
#include "unit_split.h"
#include "workspace_pool.h"

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
  m.impl("lstm_forward", TORCH_FN(fusedrnn::cpu::lstm_forward));
  m.impl("gru_forward", TORCH_FN(fusedrnn::cpu::gru_forward));
  m.impl("rnn_forward", TORCH_FN(fusedrnn::cpu::rnn_forward));
}

namespace {

// One callable's outcome: its result, or the exception it raised.
struct Outcome {
  PyObject* result = nullptr;
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
};

// fn() on the calling OpenMP thread, under `state` (the caller's ATen thread-local state:
// grad mode, the dispatch keys a custom op's implementation runs below, the profiler's
// recording), on this thread alone: parallel regions inside it are nested and run on one
// thread, torch.get_num_threads() says 1 (this team member's own setting, gone with the
// team), and MKL is told so too.
void call_alone(PyObject* fn, const at::ThreadLocalState& state, Outcome& out) {
  at::ThreadLocalStateGuard guard(state);
  // ATen sets a thread's counts on its first use of them (to torch.set_num_threads's value):
  // that first, so that it cannot undo the 1 below.
  (void)at::get_num_threads();
  omp_set_num_threads(1);
  const fusedrnn::cpu::MklOnThisThread alone;
  const PyGILState_STATE gil = PyGILState_Ensure();
  out.result = PyObject_CallObject(fn, nullptr);
  if (out.result == nullptr) PyErr_Fetch(&out.type, &out.value, &out.traceback);
  PyGILState_Release(gil);
}

// run_pair(first, second) -> (first(), second()): the two callables at the same time, on two
// threads of one OpenMP team of the caller's (torch's own threads: a separate thread would
// compete with them, as they spin for a while after each parallel region), each on its
// thread alone; one after the other where OpenMP gives one thread. The first exception
// raised is raised here, after both have finished. The second runs under a Python thread
// state made for the call (threading.local values, sys.settrace and debuggers do not
// follow it there).
PyObject* run_pair(PyObject*, PyObject* args) {
  PyObject *first = nullptr, *second = nullptr;
  if (!PyArg_ParseTuple(args, "OO:run_pair", &first, &second)) return nullptr;
  const at::ThreadLocalState state;
  Outcome outcomes[2];
  Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(2)
  {
    if (omp_get_num_threads() == 1) {
      call_alone(first, state, outcomes[0]);
      call_alone(second, state, outcomes[1]);
    } else {
      const int me = omp_get_thread_num();
      call_alone(me == 0 ? first : second, state, outcomes[me]);
    }
  }
  Py_END_ALLOW_THREADS
  PyObject* raised = nullptr;
  for (Outcome& out : outcomes) {
    if (out.result == nullptr && raised == nullptr) {
      PyErr_Restore(out.type, out.value, out.traceback);
      raised = out.type;
    } else {
      Py_XDECREF(out.type);
      Py_XDECREF(out.value);
      Py_XDECREF(out.traceback);
    }
  }
  if (raised != nullptr) {
    Py_XDECREF(outcomes[0].result);
    Py_XDECREF(outcomes[1].result);
    return nullptr;
  }
  return Py_BuildValue("(NN)", outcomes[0].result, outcomes[1].result);
}

// A bool query as a Python function: a C++ exception (FUSEDRNN_CPU_GEMM's check) becomes a
// RuntimeError rather than unwinding through the interpreter.
template <typename Query>
PyObject* bool_result(const Query& query) {
  try {
    return PyBool_FromLong(query() ? 1 : 0);
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// has_bf16_gemm() -> bool: whether the bfloat16 kernels run here (at an even hidden size).
PyObject* has_bf16_gemm(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::has_bf16_gemm(); });
}

// brgemm_built() -> bool: whether this torch's ATen has the float32 brgemm (brgemm.h).
PyObject* brgemm_built(PyObject*, PyObject*) {
  return PyBool_FromLong(fusedrnn::cpu::kTorchHasBrgemm ? 1 : 0);
}

// f32_on_brgemm() -> bool: whether float32 products run on oneDNN's brgemm (blas.h).
PyObject* f32_on_brgemm(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::uses_brgemm<float>(); });
}

// avx512_rows() -> bool: whether the float32 forward rows run on AVX-512 intrinsics
// (avx512_rows.h).
PyObject* avx512_rows(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::avx512_rows(); });
}

// bf16_on_brgemm() -> bool: whether its bfloat16 products run on oneDNN's brgemm at an even
// hidden size; bf16_on_mkl() -> bool: whether MKL's bfloat16 product is there for the others
// (bf16_product.h).
PyObject* bf16_on_brgemm(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::bf16_uses_brgemm(/*k=*/2); });
}

// bf16_on_amx() -> bool: whether those brgemm products run on AMX tiles (bf16_product.h).
PyObject* bf16_on_amx(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::bf16_brgemm_on_amx(); });
}

PyObject* bf16_on_mkl(PyObject*, PyObject*) {
  return bool_result([] { return fusedrnn::cpu::bf16_on_mkl(); });
}

// bf16_row_dots() -> bool: whether bfloat16 calls of a few rows run as row dots here
// (row_dots.h: AVX512-BF16, FUSEDRNN_CPU_GEMM=auto).
PyObject* bf16_row_dots(PyObject*, PyObject*) {
  return bool_result([] {
    return fusedrnn::cpu::row_dots_bf16_runs() && fusedrnn::cpu::gemm_mode() == "auto";
  });
}

// unit_split_failure(steps, fail_step, every_thread) -> (message or None, [steps done by
// each thread]): for the tests of a failing team. A UnitSplit (unit_split.h) of a step the
// size of batch 4 x hidden 256 LSTM's, split over torch's threads, runs `steps` steps
// through steps(), each counting itself done; the team's last thread (every thread, with
// every_thread) raises in step `fail_step`, or after its loop where fail_step equals steps
// (never where it is negative).
PyObject* unit_split_failure(PyObject*, PyObject* args) {
  long long steps = 0, fail_step = 0;
  int every_thread = 0;
  if (!PyArg_ParseTuple(args, "LLp:unit_split_failure", &steps, &fail_step, &every_thread)) {
    return nullptr;
  }
  const fusedrnn::cpu::UnitSplit split(/*batch=*/4, /*gates=*/4, /*hidden=*/256);
  std::vector<int64_t> done(split.parts, 0);
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(steps, 0)));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::string message;
  Py_BEGIN_ALLOW_THREADS
  try {
    split.run([&](int64_t first, int64_t stride) {
      if (stride != split.parts) throw std::runtime_error("a team smaller than its parts");
      const bool fails = every_thread || first == stride - 1;
      const bool finished = split.steps(order, [&](int64_t k, int64_t /*t*/) {
        if (fails && k == fail_step) {
          throw std::runtime_error("failed in step " + std::to_string(k));
        }
        ++done[first];
      });
      if (!finished) return;
      if (fails && fail_step == steps) throw std::runtime_error("failed after the steps");
    });
  } catch (const std::exception& error) {
    message = error.what();
  } catch (...) {
    message = "an exception of another type";
  }
  Py_END_ALLOW_THREADS
  PyObject* counts = PyList_New(static_cast<Py_ssize_t>(done.size()));
  if (counts == nullptr) return nullptr;
  for (size_t p = 0; p < done.size(); ++p) {
    PyObject* count = PyLong_FromLongLong(done[p]);
    if (count == nullptr) {
      Py_DECREF(counts);
      return nullptr;
    }
    PyList_SET_ITEM(counts, static_cast<Py_ssize_t>(p), count);
  }
  if (message.empty()) return Py_BuildValue("(ON)", Py_None, counts);
  return Py_BuildValue("(sN)", message.c_str(), counts);
}

// prepared_cache_counts() -> (hits, misses) of the forward products' cache since the
// process started; clear_prepared_cache() empties it (prepared_cache.h; for the tests and
// fusedrnn.empty_cache()).
PyObject* prepared_cache_counts(PyObject*, PyObject*) {
  const auto [hits, misses] = fusedrnn::cpu::prepared_cache_counts();
  return Py_BuildValue("(LL)", static_cast<long long>(hits), static_cast<long long>(misses));
}

// prepared_cache_kept() -> (entries holding products, their weights' bytes).
PyObject* prepared_cache_kept(PyObject*, PyObject*) {
  const auto [entries, bytes] = fusedrnn::cpu::prepared_cache_kept();
  return Py_BuildValue("(LL)", static_cast<long long>(entries), static_cast<long long>(bytes));
}

PyObject* clear_prepared_cache(PyObject*, PyObject*) {
  Py_BEGIN_ALLOW_THREADS  // dropping a kept weight's last reference may take the GIL
  fusedrnn::cpu::clear_prepared_cache();
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// workspace_pool_bytes() -> (bytes in use, bytes cached, cached blocks) of the workspace
// pool (workspace_pool.h); release_workspaces() -> bytes: frees its cached blocks;
// workspace(bytes) -> a uint8 tensor from it (for the tests).
PyObject* workspace_pool_bytes(PyObject*, PyObject*) {
  const auto [in_use, cached, blocks] = fusedrnn::cpu::WorkspacePool::get().bytes();
  return Py_BuildValue("(KKK)", static_cast<unsigned long long>(in_use),
                       static_cast<unsigned long long>(cached),
                       static_cast<unsigned long long>(blocks));
}

PyObject* workspace(PyObject*, PyObject* args) {
  long long bytes = 0;
  if (!PyArg_ParseTuple(args, "L", &bytes)) return nullptr;
  try {
    return THPVariable_Wrap(fusedrnn::cpu::WorkspacePool::empty({bytes}, at::kByte));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

PyObject* release_workspaces(PyObject*, PyObject*) {
  size_t bytes = 0;
  Py_BEGIN_ALLOW_THREADS
  bytes = fusedrnn::cpu::WorkspacePool::get().release_cached();
  Py_END_ALLOW_THREADS
  return PyLong_FromUnsignedLongLong(bytes);
}

// bytes_checksum(buffer) -> int: weight_checksum of the buffer's bytes (for the tests).
PyObject* bytes_checksum(PyObject*, PyObject* args) {
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "y*", &view)) return nullptr;
  uint64_t sum = 0;
  Py_BEGIN_ALLOW_THREADS
  sum = fusedrnn::cpu::bytes_checksum(view.buf, static_cast<int64_t>(view.len));
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&view);
  return PyLong_FromUnsignedLongLong(sum);
}

PyMethodDef methods[] = {
    FUSEDRNN_PYTHON_CALL(lstm_forward, "fusedrnn::lstm_forward's CPU kernel, called directly"),
    FUSEDRNN_PYTHON_CALL(gru_forward, "fusedrnn::gru_forward's CPU kernel, called directly"),
    FUSEDRNN_PYTHON_CALL(rnn_forward, "fusedrnn::rnn_forward's CPU kernel, called directly"),
    FUSEDRNN_PYTHON_CALL(lstm_bptt, "fusedrnn::lstm_bptt's CPU kernel, called directly"),
    FUSEDRNN_PYTHON_CALL(gru_bptt, "fusedrnn::gru_bptt's CPU kernel, called directly"),
    FUSEDRNN_PYTHON_CALL(rnn_bptt, "fusedrnn::rnn_bptt's CPU kernel, called directly"),
    {"run_pair", run_pair, METH_VARARGS,
     "run_pair(first, second) -> (first(), second()), on two OpenMP threads at once"},
    {"has_bf16_gemm", has_bf16_gemm, METH_NOARGS,
     "has_bf16_gemm() -> bool: whether the bfloat16 kernels run here (at an even hidden size)"},
    {"brgemm_built", brgemm_built, METH_NOARGS,
     "brgemm_built() -> bool: whether this torch's ATen has the float32 brgemm"},
    {"f32_on_brgemm", f32_on_brgemm, METH_NOARGS,
     "f32_on_brgemm() -> bool: whether float32 products run on oneDNN's brgemm"},
    {"bf16_on_brgemm", bf16_on_brgemm, METH_NOARGS,
     "bf16_on_brgemm() -> bool: whether that kernel's products run on oneDNN's brgemm (at an "
     "even hidden size)"},
    {"bf16_row_dots", bf16_row_dots, METH_NOARGS,
     "bf16_row_dots() -> bool: whether bfloat16 calls of a few rows run as row dots here"},
    {"avx512_rows", avx512_rows, METH_NOARGS,
     "avx512_rows() -> bool: whether the float32 forward rows run on AVX-512 intrinsics"},
    {"unit_split_failure", unit_split_failure, METH_VARARGS,
     "unit_split_failure(steps, fail_step, every_thread) -> (message or None, steps done per "
     "thread): a split team whose last thread (or every one) raises in step fail_step (for "
     "the tests)"},
    {"prepared_cache_counts", prepared_cache_counts, METH_NOARGS,
     "prepared_cache_counts() -> (hits, misses) of the forward products' cache"},
    {"prepared_cache_kept", prepared_cache_kept, METH_NOARGS,
     "prepared_cache_kept() -> (entries holding products, their weights' bytes)"},
    {"clear_prepared_cache", clear_prepared_cache, METH_NOARGS,
     "clear_prepared_cache(): empties the forward products' cache"},
    {"workspace_pool_bytes", workspace_pool_bytes, METH_NOARGS,
     "workspace_pool_bytes() -> (bytes in use, bytes cached, cached blocks) of the pool"},
    {"workspace", workspace, METH_VARARGS,
     "workspace(bytes) -> a uint8 tensor from the workspace pool (for the tests)"},
    {"release_workspaces", release_workspaces, METH_NOARGS,
     "release_workspaces() -> bytes: frees the workspace pool's cached blocks"},
    {"bytes_checksum", bytes_checksum, METH_VARARGS,
     "bytes_checksum(buffer) -> int: the prepared weights' checksum of a contiguous buffer"},
    {"bf16_on_amx", bf16_on_amx, METH_NOARGS,
     "bf16_on_amx() -> bool: whether that kernel's brgemm products run on AMX tiles"},
    {"bf16_on_mkl", bf16_on_mkl, METH_NOARGS,
     "bf16_on_mkl() -> bool: whether MKL's bfloat16 product is there for that kernel"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__cpu(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", "fusedrnn CPU kernels", -1,
                               methods};
  return PyModule_Create(&module);
}
