"""fusedrnn modules against torch.nn in float64: every constructor and forward option.

Outputs, final states and every gradient (input, initial states, all parameters) must agree
within a relative error of 1e-10.
"""

import itertools

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import testing

BOUND = 1e-10
DT = torch.float64
INPUT, HIDDEN, STEPS, BATCH = 5, 7, 6, 4


def _configs():
    # (cell, extra arguments, the backends that run it on the CPU besides auto's choice)
    cells = [("LSTM", {}, ("reference", "cpu")), ("LSTM", {"proj_size": 3}, ("reference", "cpu")),
             ("GRU", {}, ("reference", "cpu")),
             ("RNN", {"nonlinearity": "tanh"}, ("reference", "cpu")),
             ("RNN", {"nonlinearity": "relu"}, ("reference", "cpu"))]
    forms = ["batched", "batch_first", "unbatched", "unbatched_batch_first", "packed",
             "packed_sorted"]
    for (cell, extra, names), layers, bidirectional, bias, form, with_hx in itertools.product(
            cells, (1, 2), (False, True), (True, False), forms, (False, True)):
        kwargs = dict(extra, num_layers=layers, bidirectional=bidirectional, bias=bias,
                      batch_first=form.endswith("batch_first"))
        name = "-".join([cell, *(f"{k}={v}" for k, v in extra.items()), f"L{layers}",
                         "bi" if bidirectional else "uni", "bias" if bias else "nobias", form,
                         "hx" if with_hx else "nohx"])
        for backend in names:
            marks = [pytest.mark.requires_cpu_ext] if backend == "cpu" else []
            yield pytest.param(cell, dict(kwargs, backend=backend), form, with_hx,
                               id=f"{name}-{backend}", marks=marks)


def _input(module, form, generator):
    if form.startswith("packed"):
        return testing.make_packed(BATCH, STEPS, INPUT, dtype=DT, generator=generator,
                                   enforce_sorted=form == "packed_sorted")
    if form.startswith("unbatched"):  # (T, I) whether batch_first or not
        return torch.randn(STEPS, INPUT, dtype=DT, generator=generator)
    return testing.make_sequence(BATCH, STEPS, INPUT, batch_first=form == "batch_first",
                                 dtype=DT, generator=generator)


@pytest.mark.parametrize("cell, kwargs, form, with_hx", list(_configs()))
def test_module_matches_torch(cell, kwargs, form, with_hx):
    generator = torch.Generator().manual_seed(1)
    ours = getattr(fusedrnn, cell)(INPUT, HIDDEN, dtype=DT, **kwargs)
    theirs = testing.torch_twin(ours)
    x = _input(ours, form, generator)
    hx = None
    if with_hx:
        hx = testing.make_state(ours, BATCH, generator=generator, batched=not form.startswith("unbatched"))
    out_ours, grads_ours = testing.outputs_and_grads(ours, x, hx)
    out_theirs, grads_theirs = testing.outputs_and_grads(theirs, x, hx)
    testing.assert_close_relative(out_ours, out_theirs, BOUND, "outputs")
    testing.assert_close_relative(grads_ours, grads_theirs, BOUND, "gradients")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_packed_output_keeps_torch_packing(cell):
    generator = torch.Generator().manual_seed(2)
    ours = getattr(fusedrnn, cell)(INPUT, HIDDEN, dtype=DT)
    packed = testing.make_packed(BATCH, STEPS, INPUT, dtype=DT, generator=generator)
    out, _ = ours(packed)
    ref, _ = testing.torch_twin(ours)(packed)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    assert torch.equal(out.sorted_indices, ref.sorted_indices)
    assert torch.equal(out.unsorted_indices, ref.unsorted_indices)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_padded_outputs_are_zero_past_each_length(cell):
    generator = torch.Generator().manual_seed(3)
    module = getattr(fusedrnn, cell)(INPUT, HIDDEN, dtype=DT, bidirectional=True)
    packed = testing.make_packed(BATCH, STEPS, INPUT, dtype=DT, generator=generator)
    out, _ = module(packed)
    padded, lengths = nn.utils.rnn.pad_packed_sequence(out)
    for b, length in enumerate(lengths.tolist()):
        assert torch.all(padded[length:, b] == 0)
        assert torch.all(padded[:length, b] != 0)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch(cell, batched, with_hx, bias):
    generator = torch.Generator().manual_seed(4)
    ours = getattr(fusedrnn, cell)(INPUT, HIDDEN, bias=bias, dtype=DT)
    theirs = testing.torch_twin(ours)
    shape = (BATCH, INPUT) if batched else (INPUT,)
    x = torch.randn(shape, dtype=DT, generator=generator)
    hx = testing.make_state(ours, BATCH, generator=generator, batched=batched) if with_hx else None
    out_ours, grads_ours = testing.outputs_and_grads(ours, x, hx)
    out_theirs, grads_theirs = testing.outputs_and_grads(theirs, x, hx)
    testing.assert_close_relative(out_ours, out_theirs, BOUND, "outputs")
    testing.assert_close_relative(grads_ours, grads_theirs, BOUND, "gradients")


def test_relu_cell_matches_torch():
    ours = fusedrnn.RNNCell(INPUT, HIDDEN, nonlinearity="relu", dtype=DT)
    x = torch.randn(BATCH, INPUT, dtype=DT)
    out_ours, grads_ours = testing.outputs_and_grads(ours, x)
    out_theirs, grads_theirs = testing.outputs_and_grads(testing.torch_twin(ours), x)
    testing.assert_close_relative(out_ours, out_theirs, BOUND, "outputs")
    testing.assert_close_relative(grads_ours, grads_theirs, BOUND, "gradients")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_single_step_and_batch_one(cell):
    for steps, batch in ((1, 3), (4, 1), (1, 1)):
        module = getattr(fusedrnn, cell)(INPUT, HIDDEN, dtype=DT, num_layers=2, bidirectional=True)
        x = testing.make_sequence(batch, steps, INPUT, dtype=DT)
        out_ours, grads_ours = testing.outputs_and_grads(module, x)
        out_theirs, grads_theirs = testing.outputs_and_grads(testing.torch_twin(module), x)
        testing.assert_close_relative(out_ours, out_theirs, BOUND, f"outputs T={steps} B={batch}")
        testing.assert_close_relative(grads_ours, grads_theirs, BOUND, "gradients")


def test_empty_batch_matches_torch():
    module = fusedrnn.LSTM(INPUT, HIDDEN, dtype=DT, num_layers=2)
    x = torch.randn(STEPS, 0, INPUT, dtype=DT)
    out, (h, c) = module(x)
    ref, (rh, rc) = testing.torch_twin(module)(x)
    assert out.shape == ref.shape and h.shape == rh.shape and c.shape == rc.shape


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_low_precision_error_is_torchs_order(cell, dtype, backend):
    """In low precision on the CPU, each backend's error against float64 is at most 2x
    (outputs) and 3x (gradients) torch.nn's own error in that dtype."""
    low = getattr(fusedrnn, cell)(16, 32, dtype=dtype, backend=backend)
    testing.assert_low_precision_rule(getattr(fusedrnn, cell)(16, 32, dtype=DT),
                                      testing.torch_twin(low), low,
                                      testing.make_sequence(8, 12, 16, dtype=DT))


def _autocast_cases():
    # (module, its arguments, packed input): torch.nn's CPU paths under autocast
    yield "LSTM", {}, False  # mkldnn_rnn_layer: lowered
    yield "LSTM", {}, True  # the generic path: only the products lowered, states keep dtype
    yield "LSTM", {}, "full"  # packed, every sequence full: torch.nn runs it as padded
    yield "LSTM", {"proj_size": 3}, False
    yield "LSTM", {"proj_size": 3}, True
    yield "GRU", {}, False
    yield "GRU", {}, True
    yield "RNN", {}, False  # its products: lowered
    yield "RNN", {}, True
    for cell in ("LSTMCell", "GRUCell", "RNNCell"):
        yield cell, {}, False


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("cell, extra, packed", [
    pytest.param(*case, id="-".join([case[0], *(f"{k}={v}" for k, v in case[1].items()),
                                     *({True: ["packed"], "full": ["packed-full"]}
                                       .get(case[2], []))]))
    for case in _autocast_cases()])
def test_autocast_gives_the_dtypes_torch_gives(cell, extra, packed, backend):
    """Under CPU autocast to bfloat16, for every mix of weight, input and state dtypes
    (float32, bfloat16, float16), each output has torch.nn's dtype and agrees with torch.nn's
    values within 16-bit error (a float16 state meeting bfloat16 products is promoted to
    float32 in torch.nn's composite paths); torch raises nowhere here, so neither may
    fusedrnn."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    step = cell.endswith("Cell")
    kinds = (f32, bf16, f16)
    for weights, inputs, states in itertools.product(kinds, kinds, (None, *kinds)):
        module = getattr(fusedrnn, cell)(6, 8, **extra, backend=backend).to(weights)
        twin = testing.torch_twin(module)
        if step:
            x = torch.randn(3, 6, dtype=inputs)
        elif packed == "full":
            x = nn.utils.rnn.pack_sequence(list(testing.make_sequence(3, 5, 6, batch_first=True,
                                                                      dtype=inputs)))
        elif packed:
            x = testing.make_packed(3, 5, 6, dtype=inputs)
        else:
            x = testing.make_sequence(3, 5, 6, dtype=inputs)
        hx = None if states is None else testing.make_state(module, 3, dtype=states)
        case = f"weights {weights}, input {inputs}, states {states}"
        with torch.autocast("cpu", dtype=bf16):
            expected = testing.flatten_outputs(twin(x, hx))
            got = testing.flatten_outputs(module(x, hx))
        assert [t.dtype for t in got] == [t.dtype for t in expected], case
        for actual, reference in zip(got, expected):
            assert testing.relative_error(actual, reference) < 0.05, case


def test_asking_torch_how_it_runs_full_packed_input_leaves_the_random_state():
    """The autocast rule asks torch.nn once how it runs a packed LSTM input with every
    sequence full (as padded from some torch version on): that tiny call draws no number
    from the caller's generator."""
    from fusedrnn import functional_autocast

    functional_autocast._ask_torch_full_packed.cache_clear()
    module = fusedrnn.LSTM(3, 4)
    x = nn.utils.rnn.pack_sequence(list(torch.randn(2, 5, 3)))
    state = torch.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module(x)
    assert functional_autocast._ask_torch_full_packed.cache_info().currsize == 1
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_autocast_compiles_fullgraph(cell):
    """Under autocast the dtype rule reads oneDNN's dtypes on this CPU, which Dynamo cannot
    trace (functional_autocast._onednn_dtypes runs outside the trace)."""
    module = getattr(fusedrnn, cell)(3, 4)
    x = torch.randn(5, 2, 3)

    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x)[0]

    torch._dynamo.reset()
    with torch.no_grad():
        out, expected = torch.compile(run, fullgraph=True, backend="eager")(x), run(x)
    assert out.dtype == expected.dtype and torch.equal(out, expected)


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
def test_autocast_never_casts_float64(backend):
    """torch's autocast leaves float64 tensors alone: so does every cell."""
    for cell in ("LSTM", "GRU", "RNN"):
        module = getattr(fusedrnn, cell)(16, 32, dtype=DT, backend=backend)
        x = testing.make_sequence(4, 10, 16, dtype=DT)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = module(x)
        assert out.dtype == DT
        torch.testing.assert_close(out, testing.torch_twin(module)(x)[0], rtol=1e-10, atol=0)
