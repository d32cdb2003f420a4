"""The CPU backend's backward ops ``fusedrnn::{lstm,gru,rnn}_bptt``: the products over all
steps computed in chunks on other threads while the time loop runs
(csrc/cpu/input_weight_grads.h), against the same products over all steps at once, for
every thread count and chunking, and through ``opcheck``."""

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing
from fusedrnn.backends import common
from fusedrnn.testing import torch_threads as threads
from fusedrnn.backends.recurrence import CPU_SCHEMAS

pytestmark = pytest.mark.requires_cpu_ext

OPS = torch.ops.fusedrnn
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@pytest.mark.parametrize("name", sorted(n for n in CPU_SCHEMAS if n.endswith("_bptt")))
def test_extension_registers_a_cpu_kernel_for_each_bptt_op(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{name}", "CPU")


def _problem(cell, steps, batch, inputs, hidden, lengths, reverse, bias, dtype=torch.float64,
             proj=0):
    """A forward of one layer and direction through the recurrence ops, and the arguments of
    ``fusedrnn::{cell}_bptt`` for a random output gradient; ``proj``: the LSTM's proj_size."""
    gen = torch.Generator().manual_seed(steps * 100 + batch)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    size, state = GATES[cell] * hidden, proj or hidden
    x, w_ih, w_hh = rand(steps, batch, inputs), rand(size, inputs) * 0.3, rand(size, state) * 0.3
    h0, c0 = rand(batch, state), rand(batch, hidden)
    grad_y, grad_h = rand(steps, batch, state), rand(batch, state)
    xproj = torch.mm(x.reshape(-1, inputs), w_ih.t()).view(steps, batch, size)
    b = rand(size) if bias else None
    if cell == "lstm":
        w_hr = rand(proj, hidden) * 0.3 if proj else None
        if proj:
            y, _, _, gates, cells = OPS.lstm_proj_recurrence_fwd(xproj, b, w_hh, w_hr, h0, c0,
                                                                 lengths, reverse, True)
        else:
            y, _, _, gates, cells = OPS.lstm_recurrence_fwd(xproj, b, w_hh, h0, c0, lengths,
                                                            reverse, True)
        return (grad_y, grad_h, rand(batch, hidden), x, w_ih, w_hh, w_hr, h0, c0, lengths, y,
                gates, cells, reverse, bias)
    if cell == "gru":
        y, _, gates, hidden_n = OPS.gru_recurrence_fwd(xproj, b, w_hh, b, h0, lengths, reverse,
                                                       True)
        return (grad_y, grad_h, x, w_ih, w_hh, h0, lengths, y, gates, hidden_n, reverse, bias)
    y, _ = OPS.rnn_recurrence_fwd(xproj, b, w_hh, h0, lengths, reverse, False)
    return (grad_y, grad_h, x, w_ih, w_hh, h0, lengths, y, reverse, False, bias)


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn", 0)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_chunks_on_several_threads_match_one_pass_and_repeat_exactly(cell, proj, reverse,
                                                                      with_lengths):
    """37 steps of batch 3 make 8 chunks of 5 steps. One thread: the loop, then one product
    over all steps (the reference here). Two and four threads: overlapped chunks, summed in
    a fixed order, so every repetition gives the same bits."""
    lengths = torch.tensor([37, 12, 30]) if with_lengths else None
    args = _problem(cell, 37, 3, 5, 9, lengths, reverse, bias=True, proj=proj)
    op = getattr(OPS, f"{cell}_bptt")
    with threads(1):
        expected = op(*args)
    for count in (2, 4):
        with threads(count):
            first, second = op(*args), op(*args)
        for got, want, again in zip(first, expected, second):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            assert torch.equal(got, again)


@pytest.fixture
def nan_filled_empty():
    """ATen's empty tensors filled with NaN, in C++ too (deterministic mode's fill)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn", 0)])
@pytest.mark.parametrize("steps", [1, 2, 37])
def test_every_accumulator_is_written_for_any_steps_and_threads(nan_filled_empty, cell, proj,
                                                                 steps):
    """The weight gradients' accumulators (one per thread's slot, or the gradient itself for
    one slot) may start unwritten where a chunk has no step with an output before it (the
    first step of a forward-direction call): none may reach a gradient unwritten."""
    for reverse in (False, True):
        lengths = torch.tensor([steps, max(steps // 3, 1), steps])
        args = _problem(cell, steps, 3, 5, 9, lengths, reverse, bias=True, proj=proj)
        op = getattr(OPS, f"{cell}_bptt")
        with threads(1):
            expected = op(*args)
        for count in (1, 2, 4):
            with threads(count):
                got = op(*args)
            for g, e in zip(got, expected):
                assert g.isfinite().all()
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_bptt_gradients_are_the_products_of_the_recurrence_backward(cell, reverse):
    """Against the recurrence backward op and the products written out in PyTorch, with
    lengths (in reverse a shorter row's first step is its last one)."""
    lengths = torch.tensor([11, 4])
    args = _problem(cell, 11, 2, 4, 6, lengths, reverse, bias=True)
    with threads(2):
        grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, *states = getattr(
            OPS, f"{cell}_bptt")(*args)
    if cell == "lstm":
        assert states.pop(0).shape == (0,)  # no projection, no w_hr gradient
    if cell == "lstm":
        grad_y, grad_h, grad_c, x, w_ih, w_hh, _, h0, c0, _, y, gates, cells, _, _ = args
        dgates, dh0, dc0 = OPS.lstm_recurrence_bwd(grad_y, grad_h, grad_c, w_hh, c0, lengths,
                                                   gates, cells, reverse)
        d_in = d_hid = dgates
        assert torch.allclose(states[1], dc0, rtol=1e-12, atol=1e-12)
    elif cell == "gru":
        grad_y, grad_h, x, w_ih, w_hh, h0, _, y, gates, hidden_n, _, _ = args
        # the recurrence backward op takes the states each step started from as a tensor
        h_prev = common.previous_states(y, h0, common.active_mask(lengths, 11), reverse)
        d_in, d_hid, dh0 = OPS.gru_recurrence_bwd(grad_y, grad_h, w_hh, h_prev.contiguous(),
                                                  lengths, gates, hidden_n, reverse)
    else:
        grad_y, grad_h, x, w_ih, w_hh, h0, _, y, _, _, _ = args
        d_in, dh0 = OPS.rnn_recurrence_bwd(grad_y, grad_h, w_hh, y, lengths, reverse, False)
        d_hid = d_in
    h_prev = common.previous_states(y, h0, common.active_mask(lengths, 11), reverse)
    flat = common.flat
    for got, want in [(grad_x, torch.mm(flat(d_in), w_ih).view_as(x)),
                      (grad_w_ih, torch.mm(flat(d_in).t(), flat(x))),
                      (grad_w_hh, torch.mm(flat(d_hid).t(), flat(h_prev))),
                      (grad_b_ih, flat(d_in).sum(0)), (grad_b_hh, flat(d_hid).sum(0)),
                      (states[0], dh0)]:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 3), ("gru", 0), ("rnn", 0)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_bptt_ops(cell, proj, reverse, bias):
    args = _problem(cell, 6, 3, 4, 5, torch.tensor([6, 2, 5]), reverse, bias,
                    dtype=torch.float32, proj=proj)
    torch.library.opcheck(getattr(OPS, f"{cell}_bptt").default, args)


@pytest.mark.parametrize("save", [False, True])
def test_opcheck_lstm_proj_recurrence_fwd(save):
    xproj, w_hh, w_hr = torch.randn(5, 3, 32), torch.randn(32, 3), torch.randn(3, 8)
    args = (xproj, torch.randn(32), w_hh, w_hr, torch.randn(3, 3), torch.randn(3, 8),
            torch.tensor([5, 2, 4]), True, save)
    torch.library.opcheck(OPS.lstm_proj_recurrence_fwd.default, args)
    with pytest.raises(RuntimeError, match=r"fusedrnn cpu backend: w_hh should have shape \[32, 3\]"):
        OPS.lstm_proj_recurrence_fwd(xproj, None, torch.randn(32, 8), w_hr, *args[4:])


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn", 0)])
def test_plain_kernel_functions_match_the_ops(cell, proj):
    """The extension's plain functions of the bptt kernels (python_calls.h), which the cpu
    backend calls outside the profiler: the ops' results, bit for bit."""
    args = _problem(cell, 7, 3, 5, 6, torch.tensor([7, 2, 5]), True, bias=True, proj=proj)
    direct = getattr(_extension.CPU.load(), f"{cell}_bptt")
    results, expected = direct(*args), getattr(OPS, f"{cell}_bptt")(*args)
    assert len(results) == len(expected)
    for result, want in zip(results, expected):
        assert torch.equal(result, want)


def test_bptt_without_bias_returns_empty_bias_gradients():
    out = OPS.rnn_bptt(*_problem("rnn", 4, 2, 3, 5, None, False, bias=False))
    assert out[3].shape == (0,) and out[4].shape == (0,)


@pytest.mark.parametrize("index, value, message", [
    (3, torch.randn(36, 2, 4, dtype=torch.float64), r"x should have shape \[37, 3, 4\]"),
    (4, torch.randn(36, 4, dtype=torch.float64), r"w_ih should have shape \[36, 5\]"),
    (7, torch.randn(3, 8, dtype=torch.float64), r"h0 should have shape \[3, 9\]"),
    (3, torch.randn(37, 3, 5), "x has dtype Float, expected Double"),
])
def test_bptt_bad_arguments_name_the_argument(index, value, message):
    """``index``: the argument's position in lstm_bptt's schema."""
    args = list(_problem("lstm", 37, 3, 5, 9, None, False, bias=True))
    args[index] = value
    with pytest.raises(RuntimeError, match="fusedrnn cpu backend: " + message):
        OPS.lstm_bptt(*args)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("steps, batch", [(4096, 2), (2048, 64)])
@pytest.mark.parametrize("cell", ["GRU", "RNN", "LSTM"])
def test_bias_gradients_of_long_sequences_keep_float32_accuracy(threads, steps, batch, cell):
    """The bias gradients are column sums over every step and row: summed in blocks, the
    blocks' sums in float64, their error against float64 stays within the rule's 3x of
    torch.nn's float32 error. One running sum over the 8192 rows of 4096 steps was 10-20x;
    a running float32 sum of the blocks' sums over the 131072 rows of 2048 steps at batch 64
    was 7-12x on one thread (its overlapped chunks on two threads hid it)."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        oracle = getattr(torch.nn, cell)(8, 32).double()
        x = torch.randn(steps, batch, 8, dtype=torch.float64)
        oracle_grads = testing.outputs_and_grads(oracle, x)[1]
        low = x.float()
        errors = {}
        for name, module in (("torch", getattr(torch.nn, cell)(8, 32)),
                             ("fused", getattr(fusedrnn, cell)(8, 32, backend="cpu"))):
            module.load_state_dict(oracle.state_dict())
            grads = testing.outputs_and_grads(module.float(), low)[1]
            errors[name] = [testing.relative_error(g, o) for g, o in zip(grads, oracle_grads)]
    finally:
        torch.set_num_threads(before)
    names = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert len(names) == len(errors["fused"]) == len(errors["torch"])
    for name, fused, theirs in zip(names, errors["fused"], errors["torch"]):
        assert fused <= testing.GRADIENT_FACTOR * max(theirs, 1e-7), (name, fused, theirs)
