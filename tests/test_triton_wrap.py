"""``compat.wrap_triton``: the bare kernel for an eager launch, torch's traceable wrapper
where a tracer records the launch. Decided on a compiled-kernel object (``JITFunction``,
what ``triton.jit`` gives without the interpreter), built here without launching it: this
machine may have no GPU, and under the interpreter ``triton.jit`` gives other objects."""

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import (  # noqa: E402
    TraceableTritonKernelWrapper, kernel_side_table)
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from fusedrnn.backends.triton import compat  # noqa: E402

N = 16


def add_one(x, y, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y + offsets, tl.load(x + offsets) + 1)


def _compiled_kernel():
    """A fresh compiled-kernel object (one torch's side table has never seen)."""
    return JITFunction(add_one)


def _side_table_sizes():
    return len(kernel_side_table.id_to_kernel), len(kernel_side_table.constant_args)


def test_an_eager_launch_gets_the_bare_kernel_and_leaves_torchs_side_table_alone():
    """Torch's wrapper would send each launch through its higher-order op (about 200 us)
    and add the kernel to its global side table, never removed."""
    kernel = _compiled_kernel()
    before = _side_table_sizes()
    assert compat.wrap_triton(kernel) is kernel
    assert _side_table_sizes() == before


def test_fake_tensors_and_torch_compile_get_torchs_wrapper(monkeypatch):
    kernel = _compiled_kernel()
    with FakeTensorMode():
        assert isinstance(compat.wrap_triton(kernel), TraceableTritonKernelWrapper)
    with torch.utils._python_dispatch.TorchDispatchMode():
        assert isinstance(compat.wrap_triton(kernel), TraceableTritonKernelWrapper)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert isinstance(compat.wrap_triton(kernel), TraceableTritonKernelWrapper)


def test_functionalization_is_tracing():
    seen = []

    def body(x):
        seen.append(compat.tracing())
        return x + 1

    torch.func.functionalize(body)(torch.zeros(2))
    assert seen == [True]
    assert not compat.tracing()


def test_a_triton_op_compiles_to_a_recorded_launch():
    """Under torch.compile a ``triton_op`` whose body launches through ``compat`` is traced
    into the graph as torch's kernel wrapper (a bare launch on the fake tensors would fail);
    the graph is captured, never run."""
    from torch._dynamo.backends.common import aot_autograd

    kernel = _compiled_kernel()

    @torch.library.triton_op("fusedrnn_tests::add_one", mutates_args=())
    def add_one_op(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        compat.wrap_triton(kernel)[(1,)](x, y, N=N)
        return y

    graphs = []

    def capture(graph, inputs):
        graphs.append(graph.code)
        outputs = next(iter(graph.graph.find_nodes(op="output"))).args[0]
        return lambda *args: [torch.zeros(N) for _ in outputs]

    torch._dynamo.reset()
    torch.compile(lambda x: add_one_op(x) * 2, backend=aot_autograd(fw_compiler=capture),
                  fullgraph=True)(torch.zeros(N))
    assert len(graphs) == 1 and "triton_kernel_wrapper" in graphs[0], graphs
