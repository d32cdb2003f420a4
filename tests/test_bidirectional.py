"""The two-direction ops (``fusedrnn/ops_bidirectional.py``) and the cpu backend's running of
both directions of a layer at once (``backends/thread_split.py``, ``run_pair`` in
``csrc/cpu/bindings.cpp``)."""

import contextlib
import threading
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fusedrnn
from fusedrnn import ops, ops_bidirectional, testing
from fusedrnn.backends import cpu, cuda_streams, thread_split

DT = torch.float64
CELLS = list(ops.GATES)
MODULES = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)]
WORK = thread_split.MIN_WORK  # enough multiply-adds per piece to run two pieces at once


@pytest.fixture(autouse=True)
def pairs_of_any_size(monkeypatch):
    """The cpu backend runs the directions of these small layers at once too."""
    monkeypatch.setattr(thread_split, "MIN_WORK", 0)


def _direction(cell, gen, *, inputs, hidden, batch, proj, bias, requires_grad):
    """One direction's ``w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0``."""
    gates, state = ops.GATES[cell] * hidden, proj or hidden

    def make(*shape):
        return (torch.randn(*shape, generator=gen, dtype=DT) * 0.5).requires_grad_(requires_grad)

    return (make(gates, inputs), make(gates, state), make(gates) if bias else None,
            make(gates) if bias else None, make(proj, hidden) if proj else None,
            make(batch, state), make(batch, hidden) if cell == "lstm" else None)


def _pair_args(cell, backend, *, proj=0, bias=True, lengths=True, requires_grad=True,
               steps=5, batch=3, inputs=4, hidden=3):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(steps, batch, inputs, generator=gen, dtype=DT).requires_grad_(requires_grad)
    size = dict(inputs=inputs, hidden=hidden, batch=batch, proj=proj, bias=bias,
                requires_grad=requires_grad)
    first, second = _direction(cell, gen, **size), _direction(cell, gen, **size)
    lens = torch.tensor([steps, 2, steps - 1][:batch]) if lengths else None
    return [x, *first, *second, lens, True, backend]


def _variants():
    for cell in CELLS:
        yield pytest.param(cell, 0, True, True, id=f"{cell}")
        yield pytest.param(cell, 0, False, False, id=f"{cell}-nobias-full")
    yield pytest.param("lstm", 2, True, True, id="lstm-proj")


def _backward_args(cell, forward_args, bias, backend):
    """The pair backward op's arguments after a forward with ``forward_args`` (no autograd),
    with random output gradients."""
    out = ops_bidirectional.FORWARD[cell](*forward_args)
    args = []
    for direction in range(2):
        y, h_n, c_n, ws_a, ws_b = out[5 * direction:][:5]
        w_ih, w_hh, _, _, w_hr, h0, c0 = forward_args[1 + 7 * direction:][:7]
        args += [torch.randn_like(y), torch.randn_like(h_n),
                 torch.randn_like(c_n) if cell == "lstm" else None,
                 w_ih, w_hh, w_hr, h0, c0, y, ws_a, ws_b]
    return [*args, forward_args[0], forward_args[15], bias, backend]


def test_schemas_take_each_direction_once_x_and_lengths_once_and_no_reverse_flag():
    names = [a.rsplit(" ", 1)[1] for a in
             ops_bidirectional.FORWARD_SCHEMA[1:].split(") -> (")[0].split(", ")]
    assert names.count("x") == names.count("lengths") == 1
    assert "reverse" not in names and "reverse_rev" not in names
    for name in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "h0", "c0"):
        assert names.index(name) < names.index(name + "_rev")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell, proj, bias, lengths", list(_variants()))
def test_opcheck(cell, proj, bias, lengths, backend):
    args = _pair_args(cell, backend, proj=proj, bias=bias, lengths=lengths)
    with testing.torch_threads(2):
        torch.library.opcheck(ops_bidirectional.FORWARD[cell], args)
        plain = _pair_args(cell, backend, proj=proj, bias=bias, lengths=lengths,
                           requires_grad=False)
        torch.library.opcheck(ops_bidirectional.BACKWARD[cell],
                              _backward_args(cell, plain, bias, backend))


@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0)])
def test_fake_backward_has_the_real_strides_for_a_transposed_input(cell, proj):
    """The backends return contiguous gradients; so must the fake kernel, or inductor's
    stride checks fail (a ``batch_first`` input reaches the ops transposed)."""
    args = _pair_args(cell, "reference", proj=proj, requires_grad=False)
    args[0] = args[0].transpose(0, 1).contiguous().transpose(0, 1)
    assert not args[0].is_contiguous()
    backward_args = _backward_args(cell, args, True, "reference")
    real = ops_bidirectional.BACKWARD[cell](*backward_args)
    fake = ops_bidirectional._fake_backward(*backward_args)
    assert [(t.shape, t.stride()) for t in fake] == [(t.shape, t.stride()) for t in real]


def _outputs_and_grads(run, args):
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    outputs = [o for o in run(args) if o.numel() > 0]
    gen = torch.Generator().manual_seed(3)
    seeds = [torch.randn(o.shape, generator=gen, dtype=DT) for o in outputs]
    return outputs, torch.autograd.grad(outputs, leaves, seeds, allow_unused=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell, proj, bias, lengths", list(_variants()))
def test_each_direction_equals_the_one_direction_op(cell, proj, bias, lengths, backend):
    """Outputs and every gradient of the pair op equal two calls of the one-direction op
    (the cpu backend running the two at once on one thread each, the one-direction op on
    two threads: equal to float64 rounding)."""
    args = _pair_args(cell, backend, proj=proj, bias=bias, lengths=lengths)

    def pair(a):
        return [t for i, t in enumerate(ops_bidirectional.FORWARD[cell](*a)) if i % 5 < 3]

    def one_at_a_time(a):
        x, lens = a[0], a[15]
        out = []
        for direction in range(2):
            own = a[1 + 7 * direction:][:7]
            out += ops.FORWARD[cell](x, *own, lens, direction == 1, True, backend)[:3]
        return out

    with testing.torch_threads(2):
        got, got_grads = _outputs_and_grads(pair, args)
        want, want_grads = _outputs_and_grads(one_at_a_time, args)
    testing.assert_close_relative(got, want, 1e-12, "outputs")
    testing.assert_close_relative(got_grads, want_grads, 1e-12, "gradients")


@pytest.mark.requires_cpu_ext
def test_run_both_runs_the_pieces_at_the_same_time_on_two_threads():
    """The first piece waits for an event only the second sets: at once, it is set."""
    started = threading.Event()

    def first():
        return started.wait(timeout=30), threading.get_ident()

    def second():
        started.set()
        return threading.get_ident()

    with testing.torch_threads(2):
        assert thread_split.concurrent(WORK)
        (waited, first_thread), second_thread = thread_split.run_both(first, second, WORK)
        assert waited
        assert first_thread == threading.get_ident() != second_thread
        assert torch.get_num_threads() == 2


def test_run_both_with_one_thread_runs_one_piece_after_the_other():
    started = threading.Event()
    with testing.torch_threads(1):
        assert not thread_split.concurrent(WORK)
        (waited, _), _ = thread_split.run_both(lambda: (started.wait(timeout=0.05), 0),
                                               started.set, WORK)
    assert not waited and started.is_set()


def test_small_pieces_and_other_thread_counts_run_one_after_the_other(monkeypatch):
    monkeypatch.setattr(thread_split, "MIN_WORK", 1 << 23)
    assert thread_split.concurrent(1 << 23, threads=2)
    assert not thread_split.concurrent((1 << 23) - 1, threads=2)
    assert not thread_split.concurrent(1 << 30, threads=1)
    assert not thread_split.concurrent(1 << 30, threads=4)


def test_cpu_backend_counts_a_directions_forward_products():
    x = torch.zeros(7, 3, 5)
    lstm = (torch.zeros(4 * 6, 5), torch.zeros(4 * 6, 2), torch.zeros(2, 6))
    assert cpu._products(x, *lstm) == 7 * 3 * (24 * 5 + 24 * 2 + 2 * 6)
    assert cpu._products(x, *lstm[:2], None) == 7 * 3 * (24 * 5 + 24 * 2)


@pytest.mark.requires_cpu_ext
@pytest.mark.parametrize("failing", ["first", "second", "both"])
def test_run_both_raises_the_first_exception_after_both_pieces_finished(failing):
    finished = []

    def piece(name):
        def run():
            time.sleep(0.02)
            finished.append(name)
            if failing in (name, "both"):
                raise ValueError(f"{name} failed")
            return name
        return run

    with testing.torch_threads(2), pytest.raises(ValueError) as raised:
        thread_split.run_both(piece("first"), piece("second"), WORK)
    assert sorted(finished) == ["first", "second"]
    assert str(raised.value) == ("second failed" if failing == "second" else "first failed")


@pytest.mark.requires_cpu_ext
def test_pieces_run_under_the_callers_grad_mode_on_one_thread_each():
    """From a new thread (so OpenMP's threads are new too: ATen sets up a thread's count on
    its first use, which must not undo the pieces' one thread)."""
    def piece():
        return torch.is_grad_enabled(), torch.get_num_threads()

    def check():
        with testing.torch_threads(2):
            with torch.no_grad():
                seen.append(thread_split.run_both(piece, piece, WORK))
            seen.append(thread_split.run_both(piece, piece, WORK))

    seen = []
    thread = threading.Thread(target=check)
    thread.start()
    thread.join()
    assert seen == [((False, 1), (False, 1)), ((True, 1), (True, 1))]


@pytest.mark.requires_cpu_ext
def test_profiler_records_both_directions_on_their_threads():
    module = fusedrnn.LSTM(4, 8, bidirectional=True, backend="cpu")
    x = torch.randn(6, 2, 4)
    with testing.torch_threads(2), profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)[0].sum().backward()
    for name in ("fusedrnn::lstm_forward", "fusedrnn::lstm_bptt"):
        events = [e for e in prof.events() if e.name == name]
        assert len(events) == 2 and len({e.thread for e in events}) == 2, name


def _bidirectional_cases():
    yield pytest.param("lstm", {}, id="lstm")
    yield pytest.param("lstm", {"proj_size": 3}, id="lstm-proj")
    yield pytest.param("gru", {}, id="gru")
    yield pytest.param("rnn", {"nonlinearity": "relu"}, id="rnn-relu")


@pytest.mark.requires_cpu_ext
@pytest.mark.parametrize("cell, kwargs", list(_bidirectional_cases()))
def test_bidirectional_modules_with_directions_at_once_match_torch(cell, kwargs):
    """Two bidirectional layers, packed variable lengths, initial states, float64: the cpu
    backend with the directions at once against torch.nn, outputs and every gradient,
    and bitwise equal from run to run."""
    module = MODULES[cell](5, 6, num_layers=2, bidirectional=True, dtype=DT, backend="cpu",
                           **kwargs)
    twin = testing.torch_twin(module)
    packed = testing.make_packed(4, 7, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    hx = testing.make_state(module, 4, generator=torch.Generator().manual_seed(2))
    with testing.torch_threads(2):
        got, got_grads = testing.outputs_and_grads(module, packed, hx)
        again, again_grads = testing.outputs_and_grads(module, packed, hx)
    want, want_grads = testing.outputs_and_grads(twin, packed, hx)
    testing.assert_close_relative(got + got_grads, want + want_grads, 1e-10)
    for actual, repeat in zip(got + got_grads, again + again_grads):
        assert torch.equal(actual, repeat)


class _FakeStream:
    def __init__(self, name, log, priority=0):
        self.name, self.log, self.priority = name, log, priority

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")


class _FakeCudaTensor:
    is_cuda = True

    def __init__(self, name, log):
        self.name, self.log = name, log

    def record_stream(self, stream):
        self.log.append(f"{self.name} used on {stream.name}")


@pytest.fixture
def fake_cuda_streams(monkeypatch):
    """torch.cuda's streams replaced by fakes that log what cuda_streams asks of them."""
    log = []
    current = _FakeStream("current", log, priority=-1)

    @contextlib.contextmanager
    def on_stream(stream):
        log.append(f"enter {stream.name}")
        yield
        log.append(f"leave {stream.name}")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "Stream",
                        lambda device, priority: _FakeStream(f"side{device}", log, priority))
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(cuda_streams._local, "streams", {}, raising=False)
    return log


def test_cuda_streams_fork_and_join_around_the_reverse_direction(fake_cuda_streams):
    log = fake_cuda_streams
    x = _FakeCudaTensor("x", log)

    def direction(name):
        def run():
            log.append(f"run {name}")
            return (_FakeCudaTensor(f"{name} result", log),)
        return run

    first, second = cuda_streams.run_both(torch.device("cuda", 1), direction("forward"),
                                          direction("reverse"), (x, None, True))
    assert log == ["side1 waits for current", "x used on side1", "run forward",
                   "enter side1", "run reverse", "leave side1", "current waits for side1",
                   "reverse result used on current"]
    assert cuda_streams.side_stream(torch.device("cuda", 1), -1).priority == -1


def test_cuda_streams_join_when_the_reverse_direction_raises(fake_cuda_streams):
    def fails():
        raise ValueError("reverse failed")

    with pytest.raises(ValueError, match="reverse failed"):
        cuda_streams.run_both(torch.device("cuda", 0), lambda: (), fails)
    assert fake_cuda_streams[-1] == "current waits for side0"
