"""The cpu backend's 16-bit calls: bfloat16 and float16 through the float32 kernels
(widened), and the bfloat16 kernels of every cell (csrc/cpu/*_bf16_cpu.cpp), against the
low-precision rule end to end, and their ops against the float32 kernels on the same inputs
at the edges (no steps, no rows, rows of length 0, odd sizes, save off) and through opcheck.
"""

import functools
import math
import os
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing
from fusedrnn.backends import common
from fusedrnn.ops import GATES

pytestmark = pytest.mark.requires_cpu_ext

LOW_PRECISION_CASES = [("LSTM", {}), ("LSTM", {"proj_size": 7}), ("GRU", {}),
                       ("RNN", {"nonlinearity": "tanh"})]


def _bf16_kernel(monkeypatch):
    """The bfloat16 kernels at every size (they need a bfloat16 product: oneDNN's brgemm or
    MKL's)."""
    from fusedrnn.backends import cpu

    if not _extension.CPU.load().has_bf16_gemm():
        pytest.skip("this torch has no bfloat16 product (oneDNN's brgemm or MKL's)")
    monkeypatch.setattr(cpu, "BF16_KERNEL_FROM", 0)
    monkeypatch.setattr(cpu, "BF16_BRGEMM_FROM", 0)
    monkeypatch.setattr(cpu, "BF16_AMX_FROM", 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell, kwargs", LOW_PRECISION_CASES)
def test_16_bit_floats_within_the_low_precision_rule(cell, kwargs, dtype):
    """bfloat16 and float16 run the float32 kernels, or bfloat16 ones where sizes and the
    products allow: their error against float64 at most 2x (outputs) and 3x (gradients) the
    reference backend's in that dtype."""
    _check_low_precision(cell, kwargs, dtype)


BF16_KERNEL_CASES = [("LSTM", "lstm", {}), ("LSTM", "lstm", {"bias": False, "batch_first": True}),
                     ("GRU", "gru", {}), ("GRU", "gru", {"bias": False}),
                     ("RNN", "rnn", {"nonlinearity": "tanh"}),
                     ("RNN", "rnn", {"nonlinearity": "relu", "bias": False})]


@pytest.mark.parametrize("cell, op, kwargs", BF16_KERNEL_CASES)
def test_bfloat16_kernels_within_the_low_precision_rule(monkeypatch, cell, op, kwargs):
    """Each cell's own bfloat16 forward (products in bfloat16, the cell in float32), with
    lengths and both directions, and its backward (the same, mirrored; the products over all
    steps in bfloat16): never widened."""
    _bf16_kernel(monkeypatch)
    calls, backward_calls = [], []
    # The forward kernel as the backend calls it outside the profiler (the extension's plain
    # function, cpu._kernels); the generic backward's recurrence op through torch.ops.
    for where, name, seen in ((_extension.CPU.load(), f"{op}_forward", calls),
                              (torch.ops.fusedrnn, f"{op}_recurrence_bwd", backward_calls)):
        monkeypatch.setattr(where, name, _recording(getattr(where, name), seen))
    _check_low_precision(cell, kwargs, torch.bfloat16)
    for seen in (calls, backward_calls):  # the float64 oracle's calls run here too
        assert torch.bfloat16 in seen and torch.float32 not in seen  # never widened


@pytest.mark.parametrize("on_brgemm, f32_on_brgemm, on_amx, on_mkl", [
    (True, True, False, True), (True, True, False, False),  # a non-Intel CPU with AVX512-BF16
    (True, False, False, True),                             # an Intel CPU without AMX
    (True, False, True, True),                              # an Intel CPU with AMX
    (False, False, False, True)])                           # no bfloat16 brgemm: MKL's only
def test_bfloat16_kernel_sizes(monkeypatch, on_brgemm, f32_on_brgemm, on_amx, on_mkl):
    """Where the bfloat16 and the float32 products both run on brgemm, the kernels run at even
    hidden sizes from BF16_BRGEMM_FROM multiply-adds per step (an odd size's forward product
    is MKL's); where the bfloat16 ones run on brgemm with AMX, from BF16_AMX_FROM; elsewhere
    from BF16_KERNEL_FROM, on either bfloat16 product; without MKL's, odd sizes are
    widened."""
    from fusedrnn.backends import cpu

    extension = _extension.CPU.load()
    monkeypatch.setattr(extension, "bf16_on_brgemm", lambda: on_brgemm)
    monkeypatch.setattr(extension, "f32_on_brgemm", lambda: f32_on_brgemm)
    monkeypatch.setattr(extension, "bf16_on_amx", lambda: on_amx)
    monkeypatch.setattr(extension, "bf16_on_mkl", lambda: on_mkl)
    kernel = functools.partial(cpu.CpuBackend()._bf16_kernel, dtype=torch.bfloat16)

    def smallest_even(multiply_adds, batch, gates):  # the smallest even H: batch G H^2 >= it
        hidden = math.ceil(math.sqrt(multiply_adds / (batch * gates)))
        return hidden + hidden % 2

    brgemm_from = on_brgemm and f32_on_brgemm
    amx_from = on_brgemm and (f32_on_brgemm or on_amx)
    for cell, gates in GATES.items():
        at = lambda batch, hidden: kernel(cell, batch=batch, hidden=hidden, state=hidden)  # noqa: E731
        even = smallest_even(cpu.BF16_BRGEMM_FROM, 2, gates)  # 36, 42, 72
        assert at(2, even) == brgemm_from and not at(2, even - 2)
        assert not at(2, even + 1)  # odd: MKL's product, from BF16_KERNEL_FROM
        assert at(64, 257) == (on_mkl and 64 * gates * 257**2 >= cpu.BF16_KERNEL_FROM)
        amx = smallest_even(cpu.BF16_AMX_FROM, 2, gates)  # 128, 148, 256
        assert at(2, amx) == amx_from and at(2, amx - 2) == brgemm_from
        assert not at(2, amx + 1)
        # From BF16_KERNEL_FROM on either product: batch 16, hidden 256 for the LSTM.
        large = smallest_even(cpu.BF16_KERNEL_FROM, 16, gates)
        assert at(16, large) and at(16, large - 2) == amx_from
        assert at(64, 512)
        assert not kernel(cell, dtype=torch.float16, batch=64, hidden=512, state=512)
    assert not kernel("lstm", batch=64, hidden=512, state=7)  # projected


def _recording(op, calls):
    def record(first, *args):
        calls.append(first.dtype)
        return op(first, *args)

    return record


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_bfloat16_kernels_pass_nan_and_take_an_empty_batch(monkeypatch, cell):
    _bf16_kernel(monkeypatch)
    module = getattr(fusedrnn, cell)(4, 8, dtype=torch.bfloat16)
    assert module(torch.randn(3, 0, 4, dtype=torch.bfloat16))[0].shape == (3, 0, 8)
    x = torch.randn(3, 2, 4, dtype=torch.bfloat16)
    x[1, 0, 0] = float("nan")
    out = module(x)[0]
    assert out[1:, 0].isnan().all() and not out[:, 1].isnan().any()


def _check_low_precision(cell, kwargs, dtype):
    """The rule from a random initial state (its gradient checked too), on packed input
    with lengths, two bidirectional layers."""
    make = lambda **more: getattr(fusedrnn, cell)(8, 24, num_layers=2,  # noqa: E731
                                                  bidirectional=True, **kwargs, **more)
    oracle = make(dtype=torch.float64)
    hx = testing.make_state(oracle, 6, generator=torch.Generator().manual_seed(3))
    out, grads = testing.assert_low_precision_rule(
        oracle, make(dtype=dtype, backend="reference"), make(dtype=dtype, backend="cpu"),
        testing.make_packed(6, 8, 8, dtype=torch.float64), hx)
    assert all(t.dtype == dtype for t in out + [g for g in grads if g is not None])
    assert grads[1] is not None and grads[1].abs().sum() > 0  # the initial state's


def _bf16_ops_here(hidden):
    """Skip unless the bfloat16 ops run here at this hidden size (the products of an odd
    one are MKL's)."""
    extension = _extension.CPU.load()
    if not extension.has_bf16_gemm():
        pytest.skip("this torch has no bfloat16 product (oneDNN's brgemm or MKL's)")
    if hidden % 2 and not extension.bf16_on_mkl():
        pytest.skip("an odd hidden size's bfloat16 products need MKL's, absent here")


def _run_op(cell, dtype, xproj, w_hh, h0, c0, bias, grad_y, grad_h, lengths, reverse, save,
            rnn_y=None):
    """One direction's forward op, then (with save and steps) its backward op from the
    gradients given; the results as (forward, backward) tuples in the ops' order. The RNN's
    backward reads ``rnn_y`` where given, else the forward's y."""
    ops, cast = torch.ops.fusedrnn, lambda t: None if t is None else t.to(dtype)
    xproj, w_hh, h0, c0, bias, grad_y, grad_h = map(cast, (xproj, w_hh, h0, c0, bias, grad_y,
                                                          grad_h))
    steps = xproj.shape[0]
    if cell == "lstm":
        forward = ops.lstm_recurrence_fwd(xproj, bias, w_hh, h0, c0, lengths, reverse, save)
        y, _, _, gates, cells = forward
        if not save or steps == 0:
            return forward, ()
        return forward, ops.lstm_recurrence_bwd(grad_y, grad_h, grad_h.flip(0), w_hh, c0,
                                                lengths, gates, cells, reverse)
    if cell == "gru":
        b_ih, b_hh = (None, None) if bias is None else (bias, bias.flip(0))
        forward = ops.gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0, lengths, reverse, save)
        y, _, gates, hidden_n = forward
        if not save or steps == 0:
            return forward, ()
        mask = common.active_mask(lengths, steps)
        h_prev = common.previous_states(y, h0, mask, reverse).contiguous()
        return forward, ops.gru_recurrence_bwd(grad_y, grad_h, w_hh, h_prev, lengths, gates,
                                               hidden_n, reverse)
    forward = ops.rnn_recurrence_fwd(xproj, bias, w_hh, h0, lengths, reverse, cell == "rnn_relu")
    if steps == 0:
        return forward, ()
    y = forward[0] if rnn_y is None else cast(rnn_y)
    return forward, ops.rnn_recurrence_bwd(grad_y, grad_h, w_hh, y, lengths, reverse,
                                           cell == "rnn_relu")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
# (3, 64, 72): every cell's step has 2^18 multiply-adds or more, where csrc/cpu/unit_split.h
# gives each of two threads a chunk of the hidden units (48 and 24); (2, 300, 40): one chunk
# (40 units), the rows spread over torch's threads.
@pytest.mark.parametrize("steps, batch, hidden", [(6, 5, 8), (4, 3, 7), (0, 3, 8), (3, 0, 8),
                                                  (3, 64, 72), (2, 300, 40)])
@pytest.mark.parametrize("reverse", [False, True])
def test_bfloat16_ops_match_the_float32_kernels(two_threads, cell, steps, batch, hidden,
                                                reverse):
    """The bfloat16 ops against the float32 ones on the same (rounded) inputs: within
    bfloat16's rounding; masked steps give exact zeros, and a row of length 0 keeps its
    initial state and passes the state's gradient through unchanged."""
    _bf16_ops_here(hidden)
    gates = GATES[cell]
    make = torch.Generator().manual_seed(steps * 100 + batch * 10 + hidden)
    rand = lambda *shape: torch.randn(*shape, generator=make).bfloat16()  # noqa: E731
    args = (rand(steps, batch, gates * hidden), rand(gates * hidden, hidden) / hidden**0.5,
            rand(batch, hidden), rand(batch, hidden), rand(gates * hidden),
            rand(steps, batch, hidden), rand(batch, hidden))
    lengths = torch.arange(batch) % (steps + 1)  # 0 and steps among them
    held = lengths == 0
    for save in (False, True):
        low = _run_op(cell, torch.bfloat16, *args, lengths, reverse, save)
        # The RNN's backward reads y: both read the bfloat16 forward's, whose rounding would
        # otherwise flip relu's derivative where y is near 0.
        high = _run_op(cell, torch.float32, *args, lengths, reverse, save, rnn_y=low[0][0])
        for name, a, b in zip(("forward", "backward"), low, high):
            assert len(a) == len(b)
            for k, (x, y) in enumerate(zip(a, b)):
                assert x.dtype == torch.bfloat16 and x.shape == y.shape, (name, k)
                assert testing.relative_error(x, y) < 2e-2, (name, k)
        (forward, backward), mask = low, common.active_mask(lengths, steps)
        saved = forward[3:] if cell == "lstm" else forward[2:]  # none for the RNN
        assert save or all(t.numel() == 0 for t in saved)
        if steps and batch:
            y, h_n = forward[:2]
            assert (y[~mask.expand_as(y)] == 0).all()
            assert torch.equal(h_n[held], args[2][held])
        if backward:
            *pre_activation, dh0 = backward[:2] if cell == "lstm" else backward
            for grad in pre_activation:
                assert (grad[~mask.expand_as(grad)] == 0).all()
            assert torch.equal(dh0[held], args[6][held])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("hidden", [72, 40])
def test_bfloat16_ops_match_the_float32_kernels_exactly_after_one_step(two_threads, cell,
                                                                       hidden):
    """One step from h0 = 0 (the recurrent products exactly 0): the bfloat16 ops' results
    are the float32 ops' on the same inputs rounded to bfloat16 (to the nearest even), bit
    for bit: at 72 units (two threads' chunks, the last one's tail of 8 lanes) and 40 (one
    chunk)."""
    _bf16_ops_here(hidden)
    gates = GATES[cell]
    make = torch.Generator().manual_seed(hidden)
    rand = lambda *shape: torch.randn(*shape, generator=make).bfloat16()  # noqa: E731
    batch = 64
    args = (rand(1, batch, gates * hidden) * 3, rand(gates * hidden, hidden),
            torch.zeros(batch, hidden).bfloat16(), rand(batch, hidden), rand(gates * hidden),
            rand(1, batch, hidden), rand(batch, hidden))
    low, _ = _run_op(cell, torch.bfloat16, *args, None, False, True)
    high, _ = _run_op(cell, torch.float32, *args, None, False, True)
    for k, (x, y) in enumerate(zip(low, high)):
        assert torch.equal(x.view(torch.int16), y.bfloat16().view(torch.int16)), k


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_split_steps_match_one_thread(two_threads, cell, dtype, tolerance):
    """The ops forward and backward at a size split across two threads (12 steps, so that a
    missing barrier shows) against the same ops on one thread (unsplit), with lengths."""
    if dtype == torch.bfloat16:
        _bf16_ops_here(72)
    gates = GATES[cell]
    make = torch.Generator().manual_seed(7)
    rand = lambda *shape: torch.randn(*shape, generator=make)  # noqa: E731
    args = (rand(12, 64, gates * 72), rand(gates * 72, 72) / 72**0.5, rand(64, 72),
            rand(64, 72), rand(gates * 72), rand(12, 64, 72), rand(64, 72))
    lengths = torch.arange(64) % 13
    split = _run_op(cell, dtype, *args, lengths, True, True)
    torch.set_num_threads(1)
    alone = _run_op(cell, dtype, *args, lengths, True, True)
    for name, a, b in zip(("forward", "backward"), split, alone):
        for k, (x, y) in enumerate(zip(a, b)):
            assert testing.relative_error(x, y) <= tolerance, (name, k)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_bfloat16_ops(reverse, bias):
    _bf16_ops_here(8)
    make = torch.Generator().manual_seed(2)
    rand = lambda *shape: torch.randn(*shape, generator=make).bfloat16()  # noqa: E731
    lengths = torch.tensor([5, 2, 4])
    for cell, gates in GATES.items():
        xproj, w_hh, h0, c0 = rand(5, 3, gates * 8), rand(gates * 8, 8), rand(3, 8), rand(3, 8)
        b = rand(gates * 8) if bias else None
        ops, relu = torch.ops.fusedrnn, cell == "rnn_relu"
        if cell == "lstm":
            checks = [(ops.lstm_recurrence_fwd, (xproj, b, w_hh, h0, c0, lengths, reverse, s))
                      for s in (False, True)]
            _, _, _, saved_gates, cells = ops.lstm_recurrence_fwd(xproj, b, w_hh, h0, c0, lengths,
                                                                  reverse, True)
            checks.append((ops.lstm_recurrence_bwd, (rand(5, 3, 8), rand(3, 8), rand(3, 8), w_hh,
                                                     c0, lengths, saved_gates, cells, reverse)))
        elif cell == "gru":
            checks = [(ops.gru_recurrence_fwd, (xproj, b, w_hh, b, h0, lengths, reverse, s))
                      for s in (False, True)]
            y, _, saved_gates, hidden_n = ops.gru_recurrence_fwd(xproj, b, w_hh, b, h0, lengths,
                                                                 reverse, True)
            checks.append((ops.gru_recurrence_bwd, (rand(5, 3, 8), rand(3, 8), w_hh,
                                                    y.contiguous(), lengths, saved_gates,
                                                    hidden_n, reverse)))
        else:
            checks = [(ops.rnn_recurrence_fwd, (xproj, b, w_hh, h0, lengths, reverse, relu))]
            y, _ = ops.rnn_recurrence_fwd(xproj, b, w_hh, h0, lengths, reverse, relu)
            checks.append((ops.rnn_recurrence_bwd, (rand(5, 3, 8), rand(3, 8), w_hh, y, lengths,
                                                    reverse, relu)))
        for op, args in checks:
            torch.library.opcheck(op.default, args)


def test_bfloat16_ops_without_a_bfloat16_product_say_why():
    """Under FUSEDRNN_CPU_GEMM=aten there is no bfloat16 product: the Python side widens
    (the module runs), and the ops called directly raise, naming the loop and the way out."""
    script = """
import torch, fusedrnn
from fusedrnn import _extension
_extension.CPU.load()
assert fusedrnn.GRU(3, 8, dtype=torch.bfloat16)(torch.randn(2, 1, 3).bfloat16())[0].dtype == torch.bfloat16
bf = lambda *shape: torch.randn(*shape).bfloat16()
torch.ops.fusedrnn.gru_recurrence_fwd(bf(2, 1, 24), None, bf(24, 8), None, bf(1, 8), None, False, False)
"""
    env = dict(os.environ, FUSEDRNN_CPU_GEMM="aten")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1
    assert ("RuntimeError: fusedrnn cpu backend: the bfloat16 GRU needs a bfloat16 product "
            "reducing over 8") in run.stderr, run.stderr[-2000:]
    assert "widens to float32 instead" in run.stderr


def test_bfloat16_ops_again_on_the_portable_rows(rerun_on_portable_rows):
    """The ops and NaN tests above under FUSEDRNN_CPU_MATH=portable: where the CPU has
    AVX-512F the rest of the suite runs the LSTM's bfloat16 row with its conversions inside
    (lstm_fwd_row_bf16_avx512), and this the conversions around the portable float32 row."""
    rerun_on_portable_rows(__file__, "match_the_float32_kernels or pass_nan")
