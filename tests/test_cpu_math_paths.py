"""The ``cpu`` backend's cell math at the ends of its range (saturated and tiny gates,
subnormal states, NaN), and every product path (FUSEDRNN_CPU_GEMM) and math path
(FUSEDRNN_CPU_MATH) against the reference backend, each in a process of its own."""

import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing

pytestmark = pytest.mark.requires_cpu_ext


@pytest.mark.parametrize("value", [-100.0, -20.0, -1e-3, 0.0, 1e-3, 0.6, 20.0, 100.0])
def test_saturated_and_tiny_gates_match_torch(value):
    """The vectorised sigmoid and tanh of csrc/cpu/cpu_math.h at the ends of their range."""
    module = fusedrnn.LSTM(1, 16, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.fill_(1.0)
        module.weight_hh_l0.zero_()
    x = torch.full((3, 2, 1), value)
    out, (h, c) = module(x)
    ref, (rh, rc) = testing.torch_twin(module)(x)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-30)
    torch.testing.assert_close(c, rc, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_saturated_gates_are_exact_and_pass_no_gradient(cell):
    """A gate saturated at 1 is exactly 1, as in torch, so its derivative is exactly 0; a
    sigmoid 1 ulp short of it passed about 6e-8 of every large input or state into the
    weight gradients (an h_0 of 1e4 made the GRU's weight gradient 50x too large)."""
    module = getattr(fusedrnn, cell)(1, 1, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.fill_(1.0)
        module.weight_hh_l0.zero_()
    out, states = testing.outputs_and_grads(module, torch.full((1, 1, 1), 100.0))
    ref, ref_grads = testing.outputs_and_grads(testing.torch_twin(module),
                                               torch.full((1, 1, 1), 100.0))
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert torch.equal(module.weight_ih_l0.grad, torch.zeros(module.weight_ih_l0.shape))

    reference = getattr(fusedrnn, cell)(2, 3, dtype=torch.float64)
    module = getattr(fusedrnn, cell)(2, 3, backend="cpu")
    module.load_state_dict(reference.state_dict())
    states = list(testing.make_state(reference, 2)) if cell == "LSTM" else [
        testing.make_state(reference, 2)]
    states[0][0, 0] = 1e4
    x = testing.make_sequence(2, 4, 2, dtype=torch.float64)
    as_hx = tuple if cell == "LSTM" else (lambda s: s[0])
    _, grads = testing.outputs_and_grads(module, x.float(), as_hx([s.float() for s in states]))
    _, grads64 = testing.outputs_and_grads(reference, x, as_hx(states))
    testing.assert_close_relative(grads, grads64, 2e-5, "gradients at a large h_0")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_subnormal_states_are_stored_as_zero(cell):
    """A state that would be subnormal (here half of a c_0 or h_0 of 2e-38) is stored as 0,
    where torch keeps it: every later operation on it would take x86's slow path."""
    torch.set_flush_denormal(False)  # torch's default, which the apps (and their tests) turn on
    module = getattr(fusedrnn, cell)(1, 16, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.zero_()
        module.weight_hh_l0.zero_()
    state = torch.full((1, 2, 16), 2e-38)
    hx = (torch.zeros(1, 2, 16), state) if cell == "LSTM" else state
    x = torch.zeros(1, 2, 1)
    out, final = module(x, hx)
    _, ref_final = testing.torch_twin(module)(x, hx)
    kept = ref_final[1] if cell == "LSTM" else ref_final  # c, or h: 1e-38 in torch
    assert (kept.abs() > 0).all() and (kept.abs() < 1.17549435e-38).all()
    for tensor in [out] + list(final if cell == "LSTM" else [final]):
        assert (tensor == 0).all()


@pytest.mark.parametrize("cell, kwargs", [("GRU", {}), ("RNN", {"nonlinearity": "relu"}),
                                          ("RNN", {"nonlinearity": "tanh"})])
def test_nan_input_gives_nan_like_torch(cell, kwargs):
    module = getattr(fusedrnn, cell)(3, 8, backend="cpu", **kwargs)
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    out, _ = module(x)
    ref, _ = testing.torch_twin(module)(x)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()


GEMM_MODE_CHECK = """
import os, torch, fusedrnn
torch.manual_seed(0)  # a subprocess: conftest's seeds do not reach it
avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
from fusedrnn import _extension, testing
from fusedrnn.backends import cpu as cpu_backend
# One step: the backward's time loop is split by hidden units too (its products read
# W_hh's column blocks in place), where longer ones overlap the products over all steps.
# Batch 300: chunks of the products over all steps longer than brgemm's blocks of rows;
# 16 x 256: the LSTM's backward overlapped on brgemm only; hidden 600: the forward's operand
# in panels (brgemm.h), more than one block of k in each; 64 x 520: in panels, its columns
# split between threads at panel boundaries.
for cell, batch, hidden, steps in (("LSTM", 3, 200, 5), ("LSTM", 3, 200, 1), ("GRU", 2, 220, 5),
                                   ("LSTM", 2, 9, 5), ("GRU", 4, 12, 5), ("RNN", 3, 400, 5),
                                   ("RNN", 2, 10, 5), ("LSTM", 300, 24, 3),
                                   ("LSTM", 16, 256, 4), ("GRU", 3, 600, 3),
                                   ("LSTM", 64, 520, 2)):
    for dtype, bound in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        reference = getattr(fusedrnn, cell)(6, hidden, dtype=dtype, backend="reference")
        candidate = getattr(fusedrnn, cell)(6, hidden, dtype=dtype, backend="cpu")
        candidate.load_state_dict(reference.state_dict())
        x = testing.make_packed(batch, steps, 6, dtype=dtype)
        out_ref, grads_ref = testing.outputs_and_grads(reference, x)
        out, grads = testing.outputs_and_grads(candidate, x)
        testing.assert_close_relative(out, out_ref, bound, f"{cell} {hidden} outputs")
        testing.assert_close_relative(grads, grads_ref, bound, f"{cell} {hidden} gradients")
# The bfloat16 kernels at every size, on the product this path gives them, else widened.
extension = _extension.CPU.load()
assert extension.avx512_rows() or os.environ["FUSEDRNN_CPU_MATH"] != "auto" or not avx512
assert not extension.avx512_rows() or os.environ["FUSEDRNN_CPU_MATH"] == "auto"
cpu_backend.BF16_KERNEL_FROM = cpu_backend.BF16_BRGEMM_FROM = cpu_backend.BF16_AMX_FROM = 0
for cell, op in (("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn")):
    # The cpu backend's forward (the extension's plain function, as the backend calls it
    # outside the profiler) and backward (the generic one's recurrence op).
    where = (extension, torch.ops.fusedrnn)
    names = (f"{op}_forward", f"{op}_recurrence_bwd")
    forward, backward = (getattr(w, name) for w, name in zip(where, names))
    # Threaded; odd K (MKL's forward product); more rows than one tile; more than one
    # block of k in brgemm's tiles.
    for batch, hidden in ((4, 200), (2, 25), (70, 40), (3, 600)):
        seen = []
        for w, name, original in zip(where, names, (forward, backward)):
            setattr(w, name, (lambda original: lambda first, *args:
                    seen.append(first.dtype) or original(first, *args))(original))  # records
        make = lambda dtype, backend: getattr(fusedrnn, cell)(6, hidden, dtype=dtype,
                                                              backend=backend)
        testing.assert_low_precision_rule(make(torch.float64, "reference"),
                                          make(torch.bfloat16, "reference"),
                                          make(torch.bfloat16, "cpu"),
                                          testing.make_packed(batch, 5, 6, dtype=torch.float64))
        kernel = (hidden % 2 == 0 and extension.bf16_on_brgemm()) or extension.bf16_on_mkl()
        assert seen and set(seen) == {torch.bfloat16 if kernel else torch.float32}, (cell, seen)
    for w, name, original in zip(where, names, (forward, backward)):
        setattr(w, name, original)
# Kept products keep no weight alive on this path (the aten path's and MKL's bfloat16
# product read W_hh in place: the cache does not keep them).
for cell in ("LSTM", "GRU", "RNN"):
    for dtype in (torch.float32, torch.bfloat16):
        make = lambda: getattr(fusedrnn, cell)(6, 32, dtype=dtype, backend="cpu")
        x = testing.make_sequence(3, 4, 6, dtype=dtype)
        assert not testing.weight_outlives_module(make, x), (cell, dtype)
for steps, batch, inputs, gates in ((50, 23, 19, 300), (3, 4, 5, 12), (50, 23, 0, 300),
                                    (3, 400, 1100, 40)):
    # tiled, small, empty, inputs in blocks
    x, w = torch.randn(steps, batch, inputs), torch.randn(gates, inputs)
    exact = (x.double() @ w.double().t()).float()
    projected = torch.ops.fusedrnn.input_projection(x, w)
    testing.assert_close_relative([projected], [exact], 1e-5, f"input projection {steps}x{batch}")
print("checked")
"""


def test_every_supported_torch_has_brgemm():
    """ATen declares at::native::cpublas::brgemm for float32 in every torch from 2.6; 2.6 has
    no CPUBLAS_BRGEMM_* macros, which the build once asked for and so left brgemm out there
    (csrc/cpu/brgemm.h asks for the declaration itself)."""
    assert _extension.CPU.load().brgemm_built()


@pytest.mark.parametrize("mode, math", [("brgemm", "auto"), ("mkl", "auto"),
                                        ("unpacked", "auto"), ("aten", "auto"),
                                        ("auto", "portable")])
def test_every_product_and_math_path_matches_the_reference(mode, math):
    """Each FUSEDRNN_CPU_GEMM path: brgemm (oneDNN's kernel, auto's float32 choice on
    non-Intel x86), mkl (MKL, packed at these sizes: auto's choice elsewhere), unpacked and
    aten (the path of a torch without BLAS symbols); and FUSEDRNN_CPU_MATH=portable, the
    rows without AVX-512 intrinsics (auto's choice on CPUs without AVX-512F). Every other
    test runs auto's choices."""

    env = dict(os.environ, FUSEDRNN_CPU_GEMM=mode, FUSEDRNN_CPU_MATH=math)
    run = subprocess.run([sys.executable, "-c", GEMM_MODE_CHECK], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "checked" in run.stdout, run.stderr[-3000:]


def test_unknown_product_path_is_refused():
    env = dict(os.environ, FUSEDRNN_CPU_GEMM="sideways")
    script = "import torch, fusedrnn; fusedrnn.LSTM(3, 4, backend='cpu')(torch.randn(2, 1, 3))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "FUSEDRNN_CPU_GEMM must be auto, brgemm, mkl, unpacked or aten" in run.stderr
    # The extension's queries raise it as a Python error, and fusedrnn info reports it.
    query = "from fusedrnn import _extension; _extension.CPU.load().bf16_on_brgemm()"
    run = subprocess.run([sys.executable, "-c", query], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "RuntimeError: FUSEDRNN_CPU_GEMM must be" in run.stderr
    run = subprocess.run([sys.executable, "-m", "fusedrnn.cli", "info"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "products              none: FUSEDRNN_CPU_GEMM must" in run.stdout


# The LSTM's, the RNN's and the GRU's units split (batch 1: 2^18 multiply-adds per step).
@pytest.mark.parametrize("cell, hidden", [("GRU", 4), ("LSTM", 256), ("RNN", 512),
                                          ("GRU", 296)])
def test_unknown_math_path_is_refused(cell, hidden):
    env = dict(os.environ, FUSEDRNN_CPU_MATH="sideways")
    script = (f"import torch, fusedrnn; fusedrnn.{cell}(3, {hidden}, backend='cpu')"
              "(torch.randn(2, 1, 3))")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "RuntimeError: FUSEDRNN_CPU_MATH must be auto or portable, got 'sideways'" in run.stderr
    run = subprocess.run([sys.executable, "-m", "fusedrnn.cli", "info"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "cell math             none: FUSEDRNN_CPU_MATH must" in run.stdout


def test_edge_cases_again_on_the_portable_rows(rerun_on_portable_rows):
    """The saturation, tiny-gate, subnormal and NaN tests above under FUSEDRNN_CPU_MATH=portable:
    where the CPU has AVX-512F the rest of the suite runs the AVX-512 rows."""
    rerun_on_portable_rows(__file__, "saturated or nan_input or subnormal")
