"""The compiled extension and the ``cuda`` backend.

Without a GPU (CI here): the extension builds, imports, registers a CUDA kernel for each of
its ops, and the backend refuses CPU tensors with a clear reason. With a GPU: the backend,
with its persistent and its stepwise kernels, against the reference backend at real sizes,
by the same rules as the Triton backend.
"""

import os
import re
import subprocess

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, backends, testing
from fusedrnn.backends import BackendUnavailableError, Call
from fusedrnn.backends import cuda_plan
from fusedrnn.backends.recurrence import CUDA_SCHEMAS, SCHEMAS

import backend_cases
from backend_cases import CASES, RNN_CASES, compare_with_reference

pytestmark = pytest.mark.requires_ext
# The cuda backend's kernels, forced through cuda_plan's environment variable; the ids name
# the persistent designs "persistent_*" so that one -k expression can leave them all out.
KERNELS = [pytest.param("cluster", id="persistent_cluster"),
           pytest.param("grid", id="persistent_grid"), "stepwise"]


@pytest.fixture
def kernel(request, monkeypatch):
    """Forces the cuda backend's kernels (cuda_plan) to ``request.param``."""
    if request.param == "cluster" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need compute capability 9.0")
    monkeypatch.setenv(cuda_plan.ENV_VAR, request.param)
    return request.param


def planner_refusal(kernel, cell, kwargs, hidden, dtype, plan):
    """Why cuda_plan refuses the design ``kernel`` forced (the ``kernel`` fixture) for a
    layer of ``cell`` (``"LSTM"``, ``"GRU"``) with ``hidden`` units in ``dtype``, forward or
    backward, or None where it plans both. ``plan(cell, hidden, dtype, backward)`` asks the
    planner (``cuda_plan.plan_call`` on the GPU). Only the planner's refusal of a forced
    design counts (``cuda_plan.choose``'s RuntimeError); any other error is raised. A
    projected LSTM never asks the planner (it runs stepwise)."""
    if kwargs.get("proj_size", 0) > 0:
        return None
    refused = f"{cuda_plan.ENV_VAR}={kernel} cannot run this call"
    for backward in (False, True):
        try:
            plan(cell.lower(), hidden, dtype, backward)
        except RuntimeError as error:
            if not str(error).startswith(refused):
                raise
            return str(error)
    return None


def skip_where_the_planner_refuses(kernel, cell, kwargs, hidden, dtype):
    """Skip, with the planner's reason, a case the forced design cannot run on this GPU (a
    cluster cannot hold hidden 768: the slice of W_hh over 16 blocks is over the shared
    memory, and the backward needs 48 blocks); a design planned that then gives wrong
    results still fails."""
    refusal = planner_refusal(kernel, cell, kwargs, hidden, dtype, _plan_on_this_gpu)
    if refusal is not None:
        pytest.skip(refusal)


def _plan_on_this_gpu(cell, hidden, dtype, backward):
    return cuda_plan.plan_call(cell, hidden, dtype, torch.cuda.current_device(), backward)


def test_a_forced_design_is_skipped_only_where_the_planner_refuses_it(monkeypatch):
    """planner_refusal on the CPU, asking cuda_plan.choose of a described H200 with the
    extension's shared-memory layout: the hidden-768 cases refused to a forced cluster,
    with the planner's reason; the others, the same cases on the grid, and the projected
    LSTM (never planned) not; an error other than the refusal raised."""
    h200 = cuda_plan.Device("NVIDIA H200", (9, 0), 132, 227 * 1024)
    placed = {"clusters": 1}
    occupancy = cuda_plan.Occupancy(_extension.CUDA.load().persistent_smem_bytes,
                                    lambda kernel, dtype, smem: 1,
                                    lambda kernel, dtype, smem, cluster: placed["clusters"])

    def plan(cell, hidden, dtype, backward):
        return cuda_plan.choose(cell, hidden, "float32", 4, h200, backward, occupancy)

    for kernel in ("cluster", "grid"):
        monkeypatch.setenv(cuda_plan.ENV_VAR, kernel)
        for cell, kwargs, hidden, _, _ in CASES:
            refusal = planner_refusal(kernel, cell, kwargs, hidden, torch.float32, plan)
            if kernel == "cluster" and hidden == 768:
                assert refusal is not None, (cell, hidden)
                assert refusal.startswith("FUSEDRNN_CUDA_KERNEL=cluster cannot run this call")
                assert "cluster: the forward slice of W_hh" in refusal
            else:
                assert refusal is None, (kernel, cell, hidden, refusal)
    monkeypatch.setenv(cuda_plan.ENV_VAR, "cluster")
    placed["clusters"] = 0  # a GPU that cannot place the cluster
    assert "cannot place a cluster" in planner_refusal("cluster", "GRU", {}, 256,
                                                       torch.float32, plan)
    assert planner_refusal("cluster", "LSTM", {"proj_size": 24}, 768, torch.float32,
                           plan) is None

    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        planner_refusal("cluster", "LSTM", {}, 256, torch.float32, broken)


@pytest.mark.parametrize("name", sorted(SCHEMAS) + sorted(CUDA_SCHEMAS))
def test_extension_registers_a_cuda_kernel_for_each_op(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{name}", "CUDA")


def test_backend_is_available_but_refuses_cpu_calls():
    assert fusedrnn.available_backends()["cuda"].available
    with pytest.raises(BackendUnavailableError, match="need CUDA tensors"):
        fusedrnn.LSTM(4, 8, backend="cuda")(torch.randn(3, 2, 4))


def test_backend_limits_are_reported():
    backend = backends.get("cuda")
    cuda = torch.device("cuda")
    assert "no CUDA kernel for the elman cell" in backend.supports(cuda, torch.float32, Call("elman", 8, 8))[1]
    assert backend.supports(cuda, torch.float32, Call("rnn_relu", 8, 8)) == (True, "")
    assert backend.supports(cuda, torch.float32, Call("lstm", 8, 4)) == (True, "")
    assert "torch.float64 is not one of" in backend.supports(cuda, torch.float64)[1]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_matches_reference_on_gpu(kernel, cell, kwargs, hidden, steps, batch, packed):
    skip_where_the_planner_refuses(kernel, cell, kwargs, hidden, torch.float32)
    compare_with_reference(getattr(fusedrnn, cell), kwargs, hidden, steps, batch, packed,
                           backend="cuda", device="cuda")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("kwargs, hidden, steps, batch", RNN_CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_rnn_matches_reference_on_gpu(kwargs, hidden, steps, batch, packed):
    """The Elman cells have stepwise kernels only, whatever FUSEDRNN_CUDA_KERNEL says."""
    compare_with_reference(fusedrnn.RNN, kwargs, hidden, steps, batch, packed, backend="cuda",
                           device="cuda")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_nan_input_gives_nan_where_the_reference_does(nonlinearity):
    reference = fusedrnn.RNN(3, 8, nonlinearity=nonlinearity, device="cuda")
    candidate = fusedrnn.RNN(3, 8, nonlinearity=nonlinearity, device="cuda", backend="cuda")
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(4, 2, 3, device="cuda")
    x[1, 0, 0] = float("nan")
    out, expected = candidate(x)[0], reference(x)[0]
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()


@pytest.mark.requires_cuda
@pytest.mark.parametrize("kernel", KERNELS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_low_precision_rule_on_gpu(kernel, cell, dtype):
    skip_where_the_planner_refuses(kernel, cell, {}, backend_cases.LOW_PRECISION_HIDDEN, dtype)
    check_low_precision_rule(cell, dtype, steps=40)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rnn_tanh_low_precision_rule_on_gpu(dtype):
    check_low_precision_rule("RNN", dtype, steps=40)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("cell, kernel", [
    pytest.param("LSTM", "cluster", id="LSTM-persistent_cluster"),
    pytest.param("GRU", "grid", id="GRU-persistent_grid")], indirect=["kernel"])
def test_persistent_error_does_not_grow_faster_than_the_reference(kernel, cell):
    """One cell per design: the reference backend's 4096 steps cost seconds per run."""
    skip_where_the_planner_refuses(kernel, cell, {}, backend_cases.LOW_PRECISION_HIDDEN,
                                   torch.bfloat16)
    check_low_precision_rule(cell, torch.bfloat16, steps=4096)


def check_low_precision_rule(cell, dtype, steps):
    backend_cases.check_low_precision_rule(cell, dtype, steps, backend="cuda", device="cuda")


def opcheck_inputs():
    xproj = torch.randn(5, 3, 32, device="cuda")
    w_hh = torch.randn(32, 8, device="cuda")
    state = torch.randn(3, 8, device="cuda")
    lengths = torch.tensor([5, 2, 4], device="cuda")
    return xproj, w_hh, state, lengths


@pytest.mark.requires_cuda
def test_opcheck_recurrence_ops_on_gpu():
    xproj, w_hh, state, lengths = opcheck_inputs()
    torch.library.opcheck(torch.ops.fusedrnn.lstm_recurrence_fwd.default,
                          (xproj, None, w_hh, state, state, lengths, True, True))
    w_rnn, xproj_rnn = torch.randn(8, 8, device="cuda"), xproj[..., :8].contiguous()
    rnn_args = (xproj_rnn, None, w_rnn, state, lengths, True, True)  # reverse, relu
    y, _ = torch.ops.fusedrnn.rnn_recurrence_fwd(*rnn_args)
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_fwd.default, rnn_args)
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_bwd.default,
                          (torch.randn_like(y), state, w_rnn, y, lengths, True, True))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("kernel", KERNELS[:2], indirect=True)
def test_opcheck_persistent_ops_on_gpu(kernel):
    xproj, w_hh, state, lengths = opcheck_inputs()
    cluster = kernel == "cluster"
    torch.library.opcheck(torch.ops.fusedrnn.lstm_persistent_fwd.default,
                          (xproj, None, w_hh, state, state, lengths, True, True, 4, cluster))
    torch.library.opcheck(torch.ops.fusedrnn.gru_persistent_fwd.default,
                          (xproj[..., :24].contiguous(), None, w_hh[:24], None, state, lengths,
                           False, True, 8, cluster))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("kernel", KERNELS[:2], indirect=True)
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_persistent_kernels_are_bitwise_repeatable(kernel, cell):
    module = getattr(fusedrnn, cell)(64, 256, device="cuda", dtype=torch.bfloat16,
                                     backend="cuda")
    x = testing.make_packed(24, 50, 64, dtype=torch.bfloat16, device="cuda")
    first = testing.outputs_and_grads(module, x)
    for _ in range(3):
        again = testing.outputs_and_grads(module, x)
        for a, b in zip(first[0] + first[1], again[0] + again[1]):
            assert a is None or torch.equal(a, b)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("cell, kernel", [
    pytest.param(cell, kernel, id=f"{cell}-{name}") for cell in ("LSTM", "GRU")
    for kernel, name in (("cluster", "persistent_cluster"), ("grid", "persistent_grid"),
                         ("stepwise", "stepwise"))] + [pytest.param("RNN", "stepwise",
                                                                    id="RNN-stepwise")],
    indirect=["kernel"])
def test_bidirectional_layers_on_a_callers_stream_match_the_default_stream(kernel, cell):
    """The two directions go on the caller's stream and a side stream (cuda_streams): from a
    stream of the caller's own, outputs and gradients stay those of the default stream."""
    module = getattr(fusedrnn, cell)(64, 256, num_layers=2, bidirectional=True, device="cuda",
                                     backend="cuda")
    x = testing.make_packed(16, 40, 64, device="cuda")
    want, want_grads = testing.outputs_and_grads(module, x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got, got_grads = testing.outputs_and_grads(module, x)
    torch.cuda.synchronize()
    testing.assert_close_relative(got, want, 1e-6, "outputs")
    testing.assert_close_relative(got_grads, want_grads, 1e-6, "gradients")


@pytest.mark.requires_cuda
def test_compile_fullgraph_on_gpu_matches_eager():
    """The backend choice, the plan and the two-direction op under torch.compile on CUDA."""
    module = fusedrnn.LSTM(32, 64, num_layers=2, bidirectional=True, device="cuda",
                           backend="cuda")
    x = torch.randn(10, 4, 32, device="cuda", requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got, want = compiled(x)[0], module(x)[0]
    testing.assert_close_relative([got], [want], 1e-6, "outputs")
    leaves = [x, *module.parameters()]
    testing.assert_close_relative(torch.autograd.grad(got.sum(), leaves),
                                  torch.autograd.grad(want.sum(), leaves), 1e-6, "gradients")


@pytest.mark.requires_cuda
def test_plan_of_this_gpu_is_reported():
    plan = cuda_plan.plan_call("lstm", 768, torch.bfloat16, torch.cuda.current_device(), False)
    assert plan.kernel in ("persistent", "stepwise") and plan.reason
    if torch.cuda.get_device_capability() >= (8, 0):
        assert plan.kernel == "persistent", plan.reason


def test_no_cuda_kernel_spills_to_local_memory():
    """Every kernel of the built extension, for every architecture it holds code for, keeps
    its values in registers: no stack and no local memory (ptxas spills there), as
    ``cuobjdump -res-usage`` reports them (Triton's wheel brings cuobjdump)."""
    triton = pytest.importorskip("triton")
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        pytest.skip("no cuobjdump in Triton's wheel here")
    library = _extension.CUDA.load().__file__
    report = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    usage = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)",
                       report.stdout)
    assert len(usage) >= 40, report.stdout[:2000]  # the kernels were found and parsed
    spilling = [(name, stack, local) for name, _, stack, local in usage
                if int(stack) or int(local)]
    assert not spilling, spilling
