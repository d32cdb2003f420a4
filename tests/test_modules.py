"""Module behaviour beyond numerics: state_dict both ways, attributes, init, dropout."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import testing

SEQ_CONFIGS = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("LSTM", dict(bias=False)),
    ("GRU", dict(num_layers=3, bidirectional=True)),
    ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False)),
]
CELL_CONFIGS = [("LSTMCell", {}), ("GRUCell", dict(bias=False)), ("RNNCell", dict(nonlinearity="relu"))]


@pytest.mark.parametrize("name, kwargs", SEQ_CONFIGS + CELL_CONFIGS)
def test_state_dict_round_trips_both_ways(name, kwargs):
    ours = getattr(fusedrnn, name)(5, 8, **kwargs)
    theirs = getattr(nn, name)(5, 8, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    fresh = getattr(nn, name)(5, 8, **kwargs)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    assert list(fresh.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize("name, kwargs", SEQ_CONFIGS + CELL_CONFIGS)
def test_same_seed_gives_torchs_initial_weights(name, kwargs):
    torch.manual_seed(7)
    ours = getattr(fusedrnn, name)(5, 8, **kwargs)
    torch.manual_seed(7)
    theirs = getattr(nn, name)(5, 8, **kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, kwargs", SEQ_CONFIGS)
def test_public_attributes_match_torch(name, kwargs):
    ours = getattr(fusedrnn, name)(5, 8, batch_first=True, **kwargs)
    theirs = getattr(nn, name)(5, 8, batch_first=True, **kwargs)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode", "_flat_weights_names", "_all_weights"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert [[w.shape for w in ws] for ws in ours.all_weights] == \
        [[w.shape for w in ws] for ws in theirs.all_weights]
    assert [w.shape for w in ours._flat_weights] == [w.shape for w in theirs._flat_weights]
    ours.flatten_parameters()
    assert not isinstance(ours, nn.RNNBase)
    assert repr(ours).split("(", 1)[1] == repr(theirs).split("(", 1)[1]


def test_rnn_positional_nonlinearity_like_torch():
    assert fusedrnn.RNN(3, 4, 2, "relu").nonlinearity == nn.RNN(3, 4, 2, "relu").nonlinearity


def test_rnn_cell_is_fixed_at_construction_like_torch():
    ours = fusedrnn.RNN(4, 8)
    theirs = testing.torch_twin(ours)
    ours.nonlinearity = theirs.nonlinearity = "relu"
    x = torch.randn(3, 2, 4)
    testing.assert_close_relative([ours(x)[0]], [theirs(x)[0]], 1e-5, "tanh output")
    assert ours(x)[0].min() < 0


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_meta_tensors_give_torchs_shapes(name):
    ours = getattr(fusedrnn, name)(4, 8, num_layers=2, bidirectional=True, device="meta")
    theirs = getattr(nn, name)(4, 8, num_layers=2, bidirectional=True, device="meta")
    x = torch.randn(5, 3, 4, device="meta")
    out, state = ours(x)
    ref, ref_state = theirs(x)
    assert out.device.type == "meta" and out.shape == ref.shape
    states = state if isinstance(state, tuple) else (state,)
    ref_states = ref_state if isinstance(ref_state, tuple) else (ref_state,)
    assert [s.shape for s in states] == [s.shape for s in ref_states]


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_torch_export_with_dynamic_batch_and_time(name, backend):
    module = getattr(fusedrnn, name)(4, 8, num_layers=2, bidirectional=True, batch_first=True,
                                     backend=backend)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("time")}
    program = torch.export.export(module, (torch.randn(2, 7, 4),), dynamic_shapes=(dims,))
    x = torch.randn(5, 11, 4)
    out, state = program.module()(x)
    expected, expected_state = module(x)
    testing.assert_close_relative([out], [expected], 1e-6, "output")
    assert out.shape == (5, 11, 16)


def test_torch_export_in_bfloat16_with_dynamic_batch():
    """auto's size-dependent choice for 16-bit calls must not guard a symbolic batch."""
    module = fusedrnn.GRU(4, 8, dtype=torch.bfloat16)
    program = torch.export.export(module, (torch.randn(3, 2, 4, dtype=torch.bfloat16),),
                                  dynamic_shapes=({1: torch.export.Dim("batch")},))
    x = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    testing.assert_close_relative([program.module()(x)[0]], [module(x)[0]], 1e-2, "output")


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_torch_export_of_cells_with_dynamic_batch(name):
    module = getattr(fusedrnn, name)(4, 8)
    program = torch.export.export(module, (torch.randn(3, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = torch.randn(5, 4)
    got, expected = program.module()(x), module(x)
    got, expected = (list(r) if isinstance(r, tuple) else [r] for r in (got, expected))
    testing.assert_close_relative(got, expected, 1e-6, "cell output")


@pytest.mark.parametrize("grad_enabled", [False, True])
def test_an_exported_program_compiles_with_aot_inductor(tmp_path, grad_enabled):
    """``aoti_compile_and_package`` of a program, to deploy it; inductor runs the ops on
    parameters that require grad with grad mode on, also for a program captured under
    ``torch.no_grad`` (whose forwards save nothing for a backward)."""
    module = fusedrnn.LSTM(4, 8, num_layers=2, bidirectional=True).eval()
    dims = {0: torch.export.Dim("time", min=2), 1: torch.export.Dim("batch", min=2)}
    with torch.set_grad_enabled(grad_enabled):
        program = torch.export.export(module, (torch.randn(5, 3, 4),), dynamic_shapes=(dims,))
    path = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "lstm.pt2"))
    x = torch.randn(7, 2, 4)
    out, (h_n, c_n) = torch._inductor.aoti_load_package(path)(x)
    with torch.no_grad():
        expected = testing.flatten_outputs(module(x))
    testing.assert_close_relative([out, h_n, c_n], expected, 1e-6, "AOTInductor")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_program_exported_under_no_grad_trains(compiled):
    """Its ops were captured without ``save``; run with grad enabled, their backward
    recomputes each layer's forward, and the gradients are the module's."""
    module = fusedrnn.GRU(4, 8, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        program = torch.export.export(module, (x,))
    saves = [node.args[-2] for node in program.graph.nodes
             if str(node.target).startswith("fusedrnn.")]
    assert saves == [False, False]
    exported = program.module()
    if compiled:
        exported = torch.compile(exported, backend="aot_eager")
    gradients = []
    for model in (module, exported):
        out, h_n = model(x)
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + h_n.square().sum()
        gradients.append(torch.autograd.grad(loss, list(model.parameters())))
    testing.assert_close_relative(gradients[1], gradients[0], 1e-6, "gradients")


def test_to_dtype_and_module_device_moves_keep_working():
    module = fusedrnn.LSTM(3, 4).double()
    out, _ = module(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_dropout_training_matches_torch_bit_for_bit(name, packed):
    """torch's CPU kernels draw the between-layer dropout masks like F.dropout does, layer by
    layer (over the packed rows for packed input); fusedrnn does the same, so under one seed
    the results, gradients and the generator's state after the call are identical."""
    ours = getattr(fusedrnn, name)(5, 8, num_layers=3, dropout=0.4, dtype=torch.float64,
                                   bidirectional=True)
    theirs = testing.torch_twin(ours)
    make = testing.make_packed if packed else testing.make_sequence
    x = make(4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    out, grads = testing.outputs_and_grads(ours, x)
    after = torch.rand(1)
    torch.manual_seed(11)
    ref, ref_grads = testing.outputs_and_grads(theirs, x)
    testing.assert_close_relative(out + grads, ref + ref_grads, 1e-10, "train-mode results")
    assert torch.equal(after, torch.rand(1)), "a different number of random draws"
    out = testing.flatten_outputs(ours(x))
    torch.manual_seed(12)
    again = testing.flatten_outputs(ours(x))
    assert testing.relative_error(again[0], out[0]) > 1e-3, "dropout masks did not change"


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_dropout_off_in_eval_and_on_last_layer(name):
    ours = getattr(fusedrnn, name)(5, 8, num_layers=2, dropout=1.0, dtype=torch.float64)
    x = testing.make_sequence(3, 4, 5, dtype=torch.float64)
    eval_out = testing.flatten_outputs(ours.eval()(x))
    ref = testing.flatten_outputs(testing.torch_twin(ours).eval()(x))
    testing.assert_close_relative(eval_out, ref, 1e-10, "eval outputs")
    train_out = testing.flatten_outputs(ours.train()(x))[0]
    # p = 1 zeroes layer 0's output, so layer 1 sees only zeros; the last layer is not dropped.
    assert torch.all(train_out != 0)
    layer1 = ours._flat_weights[len(ours._flat_weights) // 2:]
    run = getattr(fusedrnn.functional, name.lower())
    expected = run(torch.zeros(4, 3, 8, dtype=torch.float64), None, layer1)[0]
    testing.assert_close_relative([train_out], [expected], 1e-12, "layer 1 on dropped input")


def test_dropout_warning_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        fusedrnn.LSTM(3, 4, dropout=0.5)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(compiler):
    """Forward and backward; inductor also checks the strides the fake kernels promise."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fusedrnn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True,
                                      proj_size=3)
            self.gru = fusedrnn.GRU(6, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            y, _ = self.lstm(x)
            z, h = self.gru(y)
            return self.head(z[:, -1]) + h.sum()

    torch._dynamo.reset()
    model = Model()
    x = torch.randn(3, 7, 4, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    out = compiled(x)
    ref = model(x)
    assert torch.allclose(out, ref, atol=1e-6)
    leaves = [x, *model.parameters()]
    grads = torch.autograd.grad(out.sum(), leaves)
    expected = torch.autograd.grad(ref.sum(), leaves)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-5)


@pytest.mark.requires_cpu_ext
def test_compile_warns_about_nothing_in_fusedrnn():
    """Dynamo warns about what it cannot trace well (an lru_cache-wrapped helper once)."""
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(fusedrnn.LSTM(3, 4), backend="eager", fullgraph=True)(torch.randn(5, 2, 3))
    ours = [str(w.message) for w in caught if "fusedrnn" in str(w.message)
            or "fusedrnn" in str(w.filename)]
    assert not ours, ours


def test_compile_loads_the_extension_on_the_first_call():
    """A fresh process whose first call of a fusedrnn module is a compiled one: loading the
    CPU extension happens while torch.compile traces, which it must be able to, without a
    guard on the loading that fails the next call (a second compile of the same call)."""
    code = ("import sys, torch, fusedrnn\n"
            "model = fusedrnn.LSTM(4, 6, bidirectional=True)\n"
            "assert 'fusedrnn._cpu' not in sys.modules\n"
            "compiled = torch.compile(model, fullgraph=True, backend='eager')\n"
            "out, _ = compiled(torch.randn(5, 2, 4))\n"
            "assert 'fusedrnn._cpu' in sys.modules and out.shape == (5, 2, 12)\n"
            "torch._dynamo.config.error_on_recompile = True\n"
            "compiled(torch.randn(5, 2, 4))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_compile_with_packed_input_breaks_the_graph_around_the_packing():
    """A PackedSequence's padded shape depends on its lengths' values: fullgraph cannot
    trace it, a plain torch.compile graph-breaks there and matches eager."""
    torch._dynamo.reset()
    model = fusedrnn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    compiled = torch.compile(model, backend="aot_eager")
    for seed, (batch, steps) in enumerate([(4, 7), (3, 9)]):
        x = testing.make_packed(batch, steps, 5, generator=torch.Generator().manual_seed(seed))
        got, got_grads = testing.outputs_and_grads(compiled, x)
        want, want_grads = testing.outputs_and_grads(model, x)
        testing.assert_close_relative(got + got_grads, want + want_grads, 1e-6)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):
        torch.compile(model, fullgraph=True, backend="aot_eager")(x)


def test_compile_with_inductor_and_packed_free_path():
    torch._dynamo.reset()
    model = fusedrnn.GRU(4, 6, num_layers=2)
    x = torch.randn(5, 2, 4)
    compiled = torch.compile(model, fullgraph=True)
    out, h = compiled(x)
    ref, rh = model(x)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(h, rh, atol=1e-6)


def test_torch_nn_lstm_cannot_be_compiled_fullgraph():
    """The reason fusedrnn modules are not subclasses of torch's: Dynamo refuses those."""
    torch._dynamo.reset()
    compiled = torch.compile(nn.LSTM(4, 6), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="(?i)rnn|lstm"):
        compiled(torch.randn(5, 2, 4))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_returned_states_are_views_only_where_torchs_are(name, grad, backend):
    """Final states (and cells' outputs) are tensors of their own where torch.nn's are (the
    batched ones): truncated backpropagation's ``h.detach_()`` works on them as on torch's
    (a view refuses it; torch's unbatched states are views)."""
    for batched in (True, False):
        module = getattr(fusedrnn, name)(4, 5, backend=backend)
        twin = getattr(nn, name)(4, 5)
        x = torch.randn(3, 2, 4) if batched else torch.randn(3, 4)
        if name.endswith("Cell"):
            x = x[0]
        with torch.set_grad_enabled(grad):
            outs = [m(x) for m in (module, twin)]
        ours, theirs = [out if name.endswith("Cell") else out[1] for out in outs]
        ours, theirs = [s if isinstance(s, tuple) else (s,) for s in (ours, theirs)]
        for state, torch_state in zip(ours, theirs):
            assert (state._base is None) == (torch_state._base is None), (name, batched)
            if torch_state._base is None:
                state.detach_()
                assert not state.requires_grad
