"""The CPU extension ``fusedrnn._cpu`` and the ``cpu`` backend.

Its kernels against the reference backend in float32 (the float64 comparisons with torch.nn
for every module option are in test_parity.py), the recurrence ops through ``opcheck``, the
argument checks of the C++ side, its workspaces, and what falls back to the reference backend
and why. The kept products and the small calls' row dots are in test_cpu_prepared_weights.py,
the cell math at the ends of its range and every product and math path in
test_cpu_math_paths.py.
"""

import threading
import time

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing
from fusedrnn.backends import BackendUnavailableError
from fusedrnn.backends.recurrence import CPU_SCHEMAS, SCHEMAS
from fusedrnn.ops import GATES

pytestmark = pytest.mark.requires_cpu_ext


@pytest.mark.parametrize("name", sorted({**SCHEMAS, **CPU_SCHEMAS}))
def test_extension_registers_a_cpu_kernel_for_each_op(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{name}", "CPU")


# Sizes around the vector widths (8, 16 floats) and the packing threshold of csrc/cpu/blas.h.
CASES = [
    ("LSTM", {}, 33, 7, 3),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, 17, 5, 4),
    ("LSTM", {}, 200, 4, 2),
    ("LSTM", {"proj_size": 5}, 33, 7, 3),
    ("LSTM", {"proj_size": 20, "num_layers": 2, "bidirectional": True}, 24, 9, 4),
    ("GRU", {}, 33, 7, 3),
    ("GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, 17, 5, 4),
    ("GRU", {}, 220, 4, 2),
    ("RNN", {"nonlinearity": "tanh"}, 33, 7, 3),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, 17, 5, 4),
]


@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_float32_matches_the_reference_backend(cell, kwargs, hidden, steps, batch, packed):
    reference = getattr(fusedrnn, cell)(12, hidden, backend="reference", **kwargs)
    candidate = getattr(fusedrnn, cell)(12, hidden, backend="cpu", **kwargs)
    candidate.load_state_dict(reference.state_dict())
    x = (testing.make_packed(batch, steps, 12) if packed
         else testing.make_sequence(batch, steps, 12))
    hx = testing.make_state(reference, batch)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x, hx)
    out, grads = testing.outputs_and_grads(candidate, x, hx)
    testing.assert_close_relative(out, out_ref, 1e-5, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-5, "gradients")


@pytest.mark.parametrize("steps", [9, 1])
@pytest.mark.parametrize("cell, batch, hidden", [("LSTM", 8, 128), ("LSTM", 3, 200),
                                                 ("GRU", 8, 128), ("GRU", 3, 200),
                                                 ("RNN", 24, 128), ("RNN", 8, 200)])
def test_steps_split_across_threads_match_the_reference_in_float64(two_threads, cell, batch,
                                                                   hidden, steps):
    """Sizes where csrc/cpu/unit_split.h gives each thread a chunk of the hidden units
    (2^18 or more multiply-adds per step; 200: chunks of 112 and 88), with lengths and both
    directions. One step: the backward's loop is split too (9 steps overlap it with the
    products over all steps instead)."""
    work = batch * GATES[{"RNN": "rnn_tanh"}.get(cell, cell.lower())] * hidden**2
    assert 2**18 <= work <= 2**22 and hidden // 32 >= 2  # unit_split.h's bounds
    reference = getattr(fusedrnn, cell)(20, hidden, bidirectional=True, dtype=torch.float64,
                                        backend="reference")
    candidate = getattr(fusedrnn, cell)(20, hidden, bidirectional=True, dtype=torch.float64,
                                        backend="cpu")
    candidate.load_state_dict(reference.state_dict())
    x = testing.make_packed(batch, steps, 20, dtype=torch.float64)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x)
    out, grads = testing.outputs_and_grads(candidate, x)
    testing.assert_close_relative(out, out_ref, 1e-12, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-12, "gradients")


@pytest.mark.parametrize("threads", [1, 2])
def test_an_exception_in_a_split_team_is_raised_after_every_thread_stops(threads):
    """csrc/cpu/unit_split.h: an exception on one thread of a split loop's team (a product
    that fails, say) is raised to the caller once every thread has left the loop, each after
    the step it failed in; the process neither ends (an exception leaving an OpenMP thread
    terminates it) nor hangs at a barrier. Failing at every step, on one thread and on all of
    them, and after the loop."""

    cpu = _extension.CPU.load()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert cpu.unit_split_failure(6, -1, False) == (None, [6] * threads)
        for fail_step in range(6):
            message, done = cpu.unit_split_failure(6, fail_step, False)
            assert message == f"failed in step {fail_step}"
            # The failing thread (the last) stops before counting its step, the others after.
            assert done == [fail_step + 1] * (threads - 1) + [fail_step]
            message, done = cpu.unit_split_failure(6, fail_step, True)
            assert (message, done) == (f"failed in step {fail_step}", [fail_step] * threads)
        assert cpu.unit_split_failure(6, 6, False) == ("failed after the steps", [6] * threads)
        for _ in range(200):  # the failure raced against the other thread's step
            assert cpu.unit_split_failure(3, 1, False)[1] == [2] * (threads - 1) + [1]
    finally:
        torch.set_num_threads(before)


def _lstm_args():
    """The arguments of ``fusedrnn::lstm_recurrence_fwd`` but the flags, by name."""
    return {"xproj": torch.randn(5, 3, 32), "bias": torch.randn(32), "w_hh": torch.randn(32, 8),
            "h0": torch.randn(3, 8), "c0": torch.randn(3, 8), "lengths": torch.tensor([5, 2, 4])}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_lstm_recurrence_ops(reverse, bias):
    args = _lstm_args()
    if not bias:
        args["bias"] = None
    for save in (False, True):
        torch.library.opcheck(torch.ops.fusedrnn.lstm_recurrence_fwd.default,
                              (*args.values(), reverse, save))
    _, _, _, gates, cells = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), reverse, True)
    grad_y, grad_h, grad_c = torch.randn(5, 3, 8), torch.randn(3, 8), torch.randn(3, 8)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_recurrence_bwd.default,
                          (grad_y, grad_h, grad_c, args["w_hh"], args["c0"], args["lengths"],
                           gates, cells, reverse))


@pytest.mark.parametrize("relu", [False, True])
def test_opcheck_rnn_recurrence_ops(relu):
    xproj, w_hh, h0 = torch.randn(5, 3, 8), torch.randn(8, 8), torch.randn(3, 8)
    lengths = torch.tensor([5, 2, 4])
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_fwd.default,
                          (xproj, torch.randn(8), w_hh, h0, lengths, True, relu))
    y, _ = torch.ops.fusedrnn.rnn_recurrence_fwd(xproj, None, w_hh, h0, lengths, True, relu)
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_bwd.default,
                          (torch.randn(5, 3, 8), torch.randn(3, 8), w_hh, y, lengths, True, relu))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_gru_recurrence_ops(bias):
    xproj, w_hh, h0 = torch.randn(5, 3, 24), torch.randn(24, 8), torch.randn(3, 8)
    b_ih, b_hh = (torch.randn(24), torch.randn(24)) if bias else (None, None)
    lengths = torch.tensor([5, 2, 4])
    for save in (False, True):
        torch.library.opcheck(torch.ops.fusedrnn.gru_recurrence_fwd.default,
                              (xproj, b_ih, w_hh, b_hh, h0, lengths, False, save))
    y, _, gates, hidden_n = torch.ops.fusedrnn.gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0,
                                                                  lengths, False, True)
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]]).contiguous()
    torch.library.opcheck(torch.ops.fusedrnn.gru_recurrence_bwd.default,
                          (torch.randn(5, 3, 8), torch.randn(3, 8), w_hh, h_prev, lengths, gates,
                           hidden_n, False))


def _layer_forward_args(cell, bias, proj):
    """The arguments of ``fusedrnn::{cell}_forward`` but the flags (T 5, B 3, I 6, H 8,
    lengths), and of the recurrence op it runs after the input projection, by name."""
    gates = GATES[cell] * 8
    state = 3 if proj else 8
    args = {"x": torch.randn(5, 3, 6), "w_ih": torch.randn(gates, 6),
            "w_hh": torch.randn(gates, state) * 0.3, "b_ih": torch.randn(gates) if bias else None,
            "b_hh": torch.randn(gates) if bias else None}
    if cell == "lstm":
        args["w_hr"] = torch.randn(3, 8) if proj else None
    args["h0"] = torch.randn(3, state)
    if cell == "lstm":
        args["c0"] = torch.randn(3, 8)
    args["lengths"] = torch.tensor([5, 2, 4])
    return args


@pytest.mark.parametrize("cell, proj", [("lstm", False), ("lstm", True), ("gru", False),
                                        ("rnn_tanh", False)])  # the RNN's flag is relu
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_forward_ops_are_the_projection_then_the_recurrence_op(cell, proj, bias, reverse):
    """``fusedrnn::{lstm,gru,rnn}_forward``, the cpu backend's forward in one call: the same
    bits as ``input_projection`` then the cell's recurrence op with the summed biases (the
    GRU's apart), in the op layer's results; and ``opcheck``."""
    ops = torch.ops.fusedrnn
    args = _layer_forward_args(cell, bias, proj)
    x, w_ih, w_hh, b_ih, b_hh = (args[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh"))
    h0, lengths = args["h0"], args["lengths"]
    xproj = ops.input_projection(x, w_ih)
    bias_sum = None if b_ih is None else b_ih + b_hh
    empty = x.new_empty(0)
    for flag in (False, True):  # save (the RNN: relu)
        if cell == "lstm":
            op = ops.lstm_forward
            recurrence = (ops.lstm_proj_recurrence_fwd(xproj, bias_sum, w_hh, args["w_hr"], h0,
                                                       args["c0"], lengths, reverse, flag)
                          if proj else ops.lstm_recurrence_fwd(xproj, bias_sum, w_hh, h0,
                                                               args["c0"], lengths, reverse, flag))
        elif cell == "gru":
            op = ops.gru_forward
            y, h_n, gates, hidden_n = ops.gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0,
                                                             lengths, reverse, flag)
            recurrence = (y, h_n, empty, gates, hidden_n)
        else:  # the flag is relu
            op = ops.rnn_forward
            y, h_n = ops.rnn_recurrence_fwd(xproj, bias_sum, w_hh, h0, lengths, reverse, flag)
            recurrence = (y, h_n, empty, empty, empty)
        results = op(*args.values(), reverse, flag)
        assert len(results) == 5
        for result, expected in zip(results, recurrence):
            assert torch.equal(result, expected)
        torch.library.opcheck(op.default, (*args.values(), reverse, flag))
        # The same kernel as a plain function of the extension (python_calls.h), as the cpu
        # backend calls it outside the profiler.
        direct = getattr(_extension.CPU.load(), op.__name__.split(".")[-1])
        results = direct(*args.values(), reverse, flag)
        assert len(results) == len(recurrence)
        for result, expected in zip(results, recurrence):
            assert torch.equal(result, expected)


def test_plain_kernel_functions_name_bad_arguments():
    """The extension's plain functions of the ops' kernels (python_calls.h) check the
    argument count and each argument's type by position (stricter than torch.ops: a bool
    must be a bool); then the kernel's own checks, raised as torch raises them."""
    args = list(_layer_forward_args("lstm", bias=True, proj=False).values()) + [False, False]
    lstm_forward = _extension.CPU.load().lstm_forward
    with pytest.raises(TypeError, match="lstm_forward takes 11 arguments, got 10"):
        lstm_forward(*args[:-1])
    with pytest.raises(TypeError, match="lstm_forward: argument 3 must be a Tensor, not int"):
        lstm_forward(*args[:2], 3, *args[3:])
    with pytest.raises(TypeError, match="argument 11 must be a bool, not int"):
        lstm_forward(*args[:-1], 0)
    with pytest.raises(RuntimeError, match=r"fusedrnn cpu backend: h0 should have shape \[3, 8\]"):
        lstm_forward(*args[:6], torch.randn(2, 8), *args[7:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_layer_forward_ops_sum_the_biases_as_torch_adds_them(dtype):
    """The forward ops sum b_ih and b_hh in a loop: the bits of ``b_ih + b_hh`` in each dtype
    (bfloat16: the float sum rounded once), checked against the recurrence op given that
    sum."""
    if dtype == torch.bfloat16 and not _extension.CPU.load().has_bf16_gemm():
        pytest.skip("this torch has no bfloat16 product for the bfloat16 kernels")
    args = {k: None if v is None or k == "lengths" else v.to(dtype)
            for k, v in _layer_forward_args("rnn_tanh", bias=True, proj=False).items()}
    ops = torch.ops.fusedrnn
    xproj = ops.input_projection(args["x"], args["w_ih"])
    expected = ops.rnn_recurrence_fwd(xproj, args["b_ih"] + args["b_hh"], args["w_hh"],
                                      args["h0"], None, False, False)
    results = ops.rnn_forward(*args.values(), False, False)
    assert results[0].dtype == dtype
    assert len(expected) == 2
    for result, want in zip(results[:2], expected):
        assert torch.equal(result, want)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_negated_views_and_zero_tensors_are_what_they_stand_for(cell):
    """A lazily negated view (``_neg_view``) or an efficient zero tensor reaches the kernels'
    plain functions (python_calls.h) as the values it stands for, as the dispatcher's
    fallbacks make it for the ops."""
    module = getattr(fusedrnn, cell)(6, 8, backend="cpu")
    x = testing.make_sequence(5, 3, 6)
    with torch.no_grad():
        negated = x.neg()._neg_view()  # x's values, held as -x with the negative bit set
        assert negated.is_neg() and negated.is_contiguous()
        assert torch.equal(module(negated)[0], module(x)[0])
        zeros = torch._efficientzerotensor(x.shape)
        assert torch.equal(module(zeros)[0], module(torch.zeros_like(x))[0])


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3), ("rnn_tanh", 1)])
def test_hidden_size_zero_gives_zero_input_gradients(cell, gates):
    """x's gradient through weights of no rows is a product over k = 0 gates: BLAS refused
    its leading dimension of 0 (MKL's DGEMM: parameter 10) and wrote nothing, so it was
    whatever memory held (here a freed tensor of 12345s)."""
    steps, batch, size = 3, 5, 7
    for _ in range(3):
        # blocks of 12345s, freed at once: the gradient's uninitialised tensor may take one
        [torch.full((steps * batch * size,), 12345.0, dtype=torch.float64) for _ in range(8)]
        x = torch.randn(steps, batch, size, dtype=torch.float64, requires_grad=True)
        weights = [torch.randn(0, size, dtype=torch.float64, requires_grad=True),
                   torch.randn(0, 0, dtype=torch.float64, requires_grad=True)]
        kind = {"rnn_tanh": "rnn"}.get(cell, cell)
        y = getattr(fusedrnn.functional, kind)(x, None, weights, bias=False, training=True,
                                              backend="cpu")[0]
        assert y.shape == (steps, batch, 0)
        (y.sum() + 0 * x.sum()).backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_the_backend_calls_the_plain_functions_but_under_the_profiler():
    """Outside the profiler the cpu backend skips torch.ops' boxed call; under it, it calls
    the ops, whose records the profiler's trace shows (test_bidirectional.py)."""
    from fusedrnn.backends import cpu

    module = _extension.CPU.load()
    assert cpu._kernels(module) is module
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert cpu._kernels(module) is torch.ops.fusedrnn


def test_plain_kernel_functions_release_the_gil():
    """A bidirectional layer's directions run on two threads at once (thread_split.py), so
    the kernels must run without the GIL, as torch.ops' calls do: while one runs on another
    thread (about 0.1 s here), this thread keeps running Python, sampling the clock; holding
    the GIL would leave one gap in the samples as long as the call."""
    lstm_forward = _extension.CPU.load().lstm_forward
    args = list(_layer_forward_args("lstm", bias=True, proj=False).values())
    args[0] = torch.randn(200_000, 3, 6)  # x
    args[-1] = None  # lengths
    span = []

    def call():
        start = time.perf_counter()
        lstm_forward(*args, False, False)
        span.extend((start, time.perf_counter()))

    samples = []
    with testing.torch_threads(1):
        worker = threading.Thread(target=call)
        worker.start()
        while worker.is_alive():
            samples.append(time.perf_counter())
        worker.join()
    start, end = span
    inside = [start] + [t for t in samples if start < t < end] + [end]
    longest_gap = max(b - a for a, b in zip(inside, inside[1:]))
    assert longest_gap < (end - start) / 2, (longest_gap, end - start)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_layer_forward_ops_name_bad_biases(cell):
    op = getattr(torch.ops.fusedrnn, f"{cell.partition('_')[0]}_forward")
    args = _layer_forward_args(cell, bias=True, proj=False)
    with pytest.raises(RuntimeError, match="b_ih and b_hh must be given together"):
        op(*dict(args, b_hh=None).values(), False, False)
    with pytest.raises(RuntimeError,
                       match=r"fusedrnn cpu backend: b_hh should have shape \[\d+\], got \[1\]"):
        op(*dict(args, b_hh=torch.randn(1)).values(), False, False)
    with pytest.raises(RuntimeError, match=r"w_ih should have shape \[\d+, 6\], got \[\d+, 5\]"):
        op(*dict(args, w_ih=args["w_ih"][:, :5].contiguous()).values(), False, False)


@pytest.mark.parametrize("name, value, message", [
    ("w_hh", torch.randn(32, 7), r"w_hh should have shape \[28, 7\], got \[32, 7\]"),
    ("h0", torch.randn(2, 8), r"h0 should have shape \[3, 8\]"),
    ("w_hh", torch.randn(32, 8, dtype=torch.float64), "w_hh has dtype Double, expected Float"),
    ("w_hh", torch.randn(8, 32).t(), "w_hh must be contiguous"),
    ("bias", torch.randn(31), r"bias should have shape \[32\]"),
    ("lengths", torch.tensor([5, 2]), r"lengths must be a contiguous int64 tensor of shape \(3\)"),
    ("lengths", torch.tensor([5.0, 2.0, 4.0]), "lengths must be a contiguous int64"),
])
def test_bad_arguments_name_the_argument(name, value, message):
    args = _lstm_args()
    args[name] = value
    with pytest.raises(RuntimeError, match="fusedrnn cpu backend: " + message):
        torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)


def test_explicit_cpu_backend_refuses_what_it_cannot_run():
    with pytest.raises(BackendUnavailableError, match="need CPU tensors, got meta"):
        fusedrnn.GRU(4, 8, backend="cpu", device="meta")(torch.randn(3, 2, 4, device="meta"))


def test_compiled_module_matches_eager():
    module = fusedrnn.LSTM(6, 10, num_layers=2, backend="cpu")
    x = testing.make_sequence(3, 5, 6)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out, grads = testing.outputs_and_grads(compiled, x)
    ref, ref_grads = testing.outputs_and_grads(module, x)
    testing.assert_close_relative(out, ref, 1e-6, "outputs")
    testing.assert_close_relative(grads, ref_grads, 1e-6, "gradients")


def test_workspaces_are_reused_and_never_shared():
    """csrc/cpu/workspace_pool.h: a freed workspace's memory serves the next one of its
    size, and live workspaces never share memory."""
    args = _lstm_args()
    first = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    second = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    assert first.data_ptr() != second.data_ptr()
    address = second.data_ptr()
    del second
    third = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    assert third.data_ptr() == address
    torch.testing.assert_close(third, first, rtol=0, atol=0)


def test_profiler_sees_the_workspaces():
    args = _lstm_args()
    with torch.profiler.profile(profile_memory=True) as prof:
        gates = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    op = next(e for e in prof.key_averages() if e.key == "fusedrnn::lstm_recurrence_fwd")
    assert op.self_cpu_memory_usage >= gates.numel() * gates.element_size()


def test_input_projection_op_matches_a_product_and_names_bad_arguments():
    x, w_ih = torch.randn(5, 3, 7), torch.randn(12, 7)
    torch.library.opcheck(torch.ops.fusedrnn.input_projection.default, (x, w_ih))
    out = torch.ops.fusedrnn.input_projection(x, w_ih)
    torch.testing.assert_close(out, torch.einsum("tbi,gi->tbg", x, w_ih))
    with pytest.raises(RuntimeError, match=r"fusedrnn cpu backend: w_ih should have shape \[12, 7\]"):
        torch.ops.fusedrnn.input_projection(x, torch.randn(12, 6))
