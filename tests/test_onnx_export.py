"""``torch.onnx.export`` of fusedrnn's modules, with both of torch's exporters: the exported
graph holds ONNX's own recurrent operators, as ``torch.nn``'s does, and ONNX Runtime computes
with it what the module computes eagerly, at shapes other than the example's."""

import functools
import io
import sys
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import testing
from fusedrnn.models import SentimentClassifier

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BOUND = 1e-5  # float32 against float32, the same weights through other kernels
EXPORTERS = ["torchscript", "dynamo"]
SEQUENCES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(bias=False)),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
]


def _flat(value):
    return [leaf for item in value for leaf in _flat(item)] if isinstance(value, tuple) \
        else [value]


@functools.lru_cache(maxsize=None)
def _dynamo_exporter_reports_itself():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.onnx.is_in_onnx_export())
            return x + 1

    torch.onnx.export(Probe(), (torch.zeros(2),), dynamo=True)
    return bool(seen) and all(seen)


def _dynamic_shapes(dynamic):
    """``dynamic_shapes`` for ``torch.export`` from ``{dim: name}`` per tensor (nested in
    tuples as the arguments are), one ``Dim`` per name."""
    dims = {}

    def shapes(value):
        if isinstance(value, tuple):
            return tuple(shapes(item) for item in value)
        return {index: dims.setdefault(name, torch.export.Dim(name))
                for index, name in value.items()}

    return shapes(dynamic)


def _export(module, args, exporter, dynamic):
    """``module`` exported with ``args`` as the example; ``dynamic`` mirrors ``args``, a
    ``{dim: name}`` of the dims left free per tensor. Returns the ONNX model's bytes."""
    with warnings.catch_warnings():  # the exporters' advice on their own options
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            if not _dynamo_exporter_reports_itself():
                pytest.skip(f"torch {torch.__version__}'s exporter with dynamo=True does not "
                            "report itself through torch.onnx.is_in_onnx_export() "
                            "(pytorch/pytorch#149678), so fusedrnn cannot see it export")
            program = torch.onnx.export(module, args, dynamo=True,
                                        dynamic_shapes=_dynamic_shapes(dynamic))
            return program.model_proto.SerializeToString()
        names = [f"input{index}" for index in range(len(_flat(args)))]
        buffer = io.BytesIO()
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=names,
                          dynamic_axes=dict(zip(names, _flat(dynamic))))
        return buffer.getvalue()


def _run(model, inputs):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), f"the model takes {names}"
    return [torch.from_numpy(o) for o in
            session.run(None, {n: i.numpy() for n, i in zip(names, inputs)})]


def _op_types(model):
    graph = onnx.load_from_string(model).graph
    return [(node.domain, node.op_type) for node in graph.node]


def _assert_onnx_ops_only(model):
    foreign = [op for op in _op_types(model) if op[0] not in ("", "ai.onnx")]
    assert not foreign, f"operators outside ONNX's own domain: {foreign}"


def _sequence_case(name, kwargs, with_states, free_time):
    """A module (input 5, hidden 8), ``arguments(batch, steps)`` making its inputs, and their
    free dims for :func:`_dynamic_shapes`: batch, and time where ``free_time``."""
    torch.manual_seed(0)
    module = getattr(fusedrnn, name)(5, 8, **kwargs).eval()
    batch_dim, time_dim = (0, 1) if module.batch_first else (1, 0)

    def arguments(batch, steps):
        x = testing.make_sequence(batch, steps, 5, batch_first=module.batch_first)
        return (x, testing.make_state(module, batch)) if with_states else (x,)

    dynamic = ({batch_dim: "batch", time_dim: "time"} if free_time else {batch_dim: "batch"},)
    if with_states:
        dynamic += (({1: "batch"}, {1: "batch"}) if name == "LSTM" else {1: "batch"},)
    return module, arguments, dynamic


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("name, kwargs", SEQUENCES)
def test_sequence_modules_export_to_onnx(name, kwargs, with_states, exporter):
    """The TorchScript exporter writes ONNX's LSTM, GRU and RNN operators, free in batch and
    time. The ``torch.export`` one writes them where its translation covers the options and
    unrolls the layer over the example's steps elsewhere: batch alone is free there."""
    module, arguments, dynamic = _sequence_case(name, kwargs, with_states,
                                                free_time=exporter == "torchscript")
    model = _export(module, arguments(2, 4), exporter, dynamic)
    _assert_onnx_ops_only(model)
    if exporter == "torchscript":
        assert ("", name) in _op_types(model), _op_types(model)
    if not with_states:  # the same ONNX operators as torch.nn's module exported alike
        twin = _export(testing.torch_twin(module), arguments(2, 4), exporter, dynamic)
        assert _op_types(model).count(("", name)) == _op_types(twin).count(("", name))

    other = arguments(3, 6 if exporter == "torchscript" else 4)
    expected = testing.flatten_outputs(module(*other))
    got = _run(model, _flat(other))
    testing.assert_close_relative(got, expected, BOUND, f"{name} through ONNX Runtime")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_export_to_onnx(name, with_states, exporter):
    torch.manual_seed(0)
    module = getattr(fusedrnn, name)(5, 8).eval()

    def arguments(batch):
        x = torch.randn(batch, 5)
        if not with_states:
            return (x,)
        return (x, (torch.randn(batch, 8), torch.randn(batch, 8)) if name == "LSTMCell"
                else torch.randn(batch, 8))

    dynamic = ({0: "batch"},)
    if with_states:
        dynamic += (({0: "batch"}, {0: "batch"}) if name == "LSTMCell" else {0: "batch"},)
    model = _export(module, arguments(2), exporter, dynamic)
    _assert_onnx_ops_only(model)
    other = arguments(3)
    got = _run(model, _flat(other))
    testing.assert_close_relative(got, testing.flatten_outputs(module(*other)), BOUND, name)


class _Packed(torch.nn.Module):
    """Padded batch and lengths in, through a packed LSTM, padded output and h_n out."""

    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(5, 8, num_layers=2, bidirectional=True)

    def forward(self, x, lengths):
        output, (h_n, _) = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(output)[0], h_n


def test_packed_input_exports_with_the_torchscript_exporter():
    """As torch.nn's modules: packing and unpacking around the layer, in pairs."""
    torch.manual_seed(0)
    module = _Packed().eval()
    example = (torch.randn(4, 2, 5), torch.tensor([4, 2]))
    model = _export(module, example, "torchscript", ({0: "time", 1: "batch"}, {0: "batch"}))
    _assert_onnx_ops_only(model)
    x, lengths = torch.randn(6, 3, 5), torch.tensor([3, 6, 1])
    got = _run(model, [x, lengths])
    testing.assert_close_relative(got, list(module(x, lengths)), BOUND, "packed LSTM")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_sentiment_classifier_exports(cell):
    """The IMDB model (embedding, packed bidirectional layers, attention) as a deployed one."""
    torch.manual_seed(0)
    model = SentimentClassifier(50, embedding_dim=6, hidden_size=8, num_layers=2, cell=cell,
                                attention=True).eval()
    example = (torch.randint(1, 50, (2, 5)), torch.tensor([5, 3]))
    exported = _export(model, example, "torchscript", ({0: "batch", 1: "time"}, {0: "batch"}))
    tokens, lengths = torch.randint(1, 50, (3, 7)), torch.tensor([2, 7, 4])
    got = _run(exported, [tokens, lengths])
    with torch.no_grad():
        testing.assert_close_relative(got, [model(tokens, lengths)], BOUND, "logits")


def test_bad_input_meets_fusedrnns_checks_under_export():
    module = fusedrnn.GRU(5, 8).eval()
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size"):
        _export(module, (torch.randn(4, 2, 6),), "torchscript", ({},))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_an_lstm_with_proj_size_is_refused(exporter):
    """ONNX's LSTM has no projection: the TorchScript exporter refuses torch.nn's LSTM with
    ``proj_size``, and the other writes one that ONNX Runtime rejects. Refused here, by name
    where the exporter shows the model's error (the other falls back to capturing the custom
    ops, which it then cannot translate)."""
    module = fusedrnn.LSTM(5, 8, proj_size=3).eval()
    with pytest.raises(Exception) as error:
        _export(module, (torch.randn(4, 2, 5),), exporter, ({},))
    if exporter == "torchscript":
        assert "proj_size=3 cannot be exported to ONNX" in str(error.value)


def test_an_unknown_backend_is_refused_under_export_as_in_eager():
    module = fusedrnn.GRU(5, 8, backend="bogus").eval()
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        _export(module, (torch.randn(4, 2, 5),), "torchscript", ({},))


# ``torch.export`` programs: the custom ops through fusedrnn.onnx_translation_table()

def _export_program(module, args, dynamic):
    """``module`` through ``torch.export.export`` (free dims as ``_export`` takes them), then
    ``torch.onnx.export`` of the program with fusedrnn's translations; the ONNX bytes."""
    pytest.importorskip("onnxscript")
    program = torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(dynamic))
    assert any(str(node.target).startswith("fusedrnn.") for node in program.graph.nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, args, dynamo=True,
            custom_translation_table=fusedrnn.onnx_translation_table())
    return onnx_program.model_proto.SerializeToString()


PROGRAMS = SEQUENCES + [("LSTM", dict(bias=False)), ("GRU", dict(num_layers=2,
                                                                bidirectional=True)),
                        ("RNN", dict(batch_first=True))]


@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("name, kwargs", PROGRAMS)
def test_exported_programs_translate_to_one_onnx_operator_a_layer(name, kwargs, with_states):
    """Each layer's op, one- or two-direction, becomes one of ONNX's recurrent operators
    (both directions in one), free in batch and time."""
    module, arguments, dynamic = _sequence_case(name, kwargs, with_states, free_time=True)
    model = _export_program(module, arguments(2, 4), dynamic)
    _assert_onnx_ops_only(model)
    assert _op_types(model).count(("", name)) == module.num_layers, _op_types(model)
    other = arguments(3, 7)
    testing.assert_close_relative(_run(model, _flat(other)),
                                  testing.flatten_outputs(module(*other)), BOUND, name)


class _Op(torch.nn.Module):
    """One fusedrnn forward op called directly, with per-sequence lengths (its weights
    buffers: nothing differentiates it, so it saves nothing)."""

    def __init__(self, cell, bidirectional, reverse):
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.bidirectional, self.reverse = cell, bidirectional, reverse
        gates = fusedrnn.ops.GATES[cell]
        shapes = [(gates * 8, 5), (gates * 8, 8), (gates * 8,), (gates * 8,)]
        self.names = [f"weight{index}" for index in range(4 * (2 if bidirectional else 1))]
        for index, name in enumerate(self.names):
            self.register_buffer(name, torch.randn(shapes[index % 4]) * 0.3)

    def forward(self, x, lengths, h0):
        c0 = h0 if self.cell == "lstm" else None
        weights = [getattr(self, name) for name in self.names]
        own = [(*weights[4 * d:4 * d + 4], None, h0, c0)
               for d in range(2 if self.bidirectional else 1)]
        if self.bidirectional:
            op = getattr(torch.ops.fusedrnn, f"{self.cell}_bidir_fwd")
            results = op(x, *own[0], *own[1], lengths, False, "reference")
            return results[0], results[1], results[5], results[6]
        op = getattr(torch.ops.fusedrnn, f"{self.cell}_fwd")
        return op(x, *own[0], lengths, self.reverse, False, "reference")[:2]


@pytest.mark.parametrize("bidirectional, reverse", [(False, False), (False, True),
                                                    (True, False)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_lengths_become_onnx_sequence_lens(cell, bidirectional, reverse):
    """Each sequence stops at its length, the reverse direction starts at its last valid
    step, and the output after it is zero; one of length 0 ends in its initial states: in
    ONNX Runtime as in fusedrnn's op."""
    module = _Op(cell, bidirectional, reverse).eval()
    example = (torch.randn(4, 2, 5), torch.tensor([4, 2]), torch.randn(2, 8))
    model = _export_program(module, example,
                            ({0: "time", 1: "batch"}, {0: "batch"}, {0: "batch"}))
    x, lengths, h0 = torch.randn(6, 4, 5), torch.tensor([3, 6, 0, 1]), torch.randn(4, 8)
    expected = list(module(x, lengths, h0))
    assert expected[0][3:, 0].abs().max() == 0  # the op's padding, which ONNX's must match
    testing.assert_close_relative(_run(model, [x, lengths, h0]), expected, BOUND, cell)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_exported_cells_translate(name):
    torch.manual_seed(0)
    module = getattr(fusedrnn, name)(5, 8).eval()
    model = _export_program(module, (torch.randn(2, 5),), ({0: "batch"},))
    _assert_onnx_ops_only(model)
    x = torch.randn(3, 5)
    testing.assert_close_relative(_run(model, [x]), testing.flatten_outputs(module(x)),
                                  BOUND, name)


def test_modules_export_with_the_table_on_every_torch():
    """``dynamo=True`` on a module with the table: torch 2.6 and 2.7's exporter, which does
    not say that it exports, translates the custom ops; later ones export torch's ATen ops."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = fusedrnn.LSTM(5, 8, num_layers=2, bidirectional=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.randn(4, 2, 5),), dynamo=True,
            dynamic_shapes=({1: torch.export.Dim("batch")},),
            custom_translation_table=fusedrnn.onnx_translation_table())
    model = program.model_proto.SerializeToString()
    _assert_onnx_ops_only(model)
    x = torch.randn(4, 3, 5)
    testing.assert_close_relative(_run(model, [x]), testing.flatten_outputs(module(x)),
                                  BOUND, "LSTM")


def test_a_projection_is_refused_by_the_translation():
    module = fusedrnn.LSTM(5, 8, proj_size=3).eval()
    with pytest.raises(Exception) as error:
        _export_program(module, (torch.randn(4, 2, 5),), ({},))
    assert "ONNX's LSTM operator has no projection" in str(error.value)


def test_the_table_without_onnxscript_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises
    with pytest.raises(ImportError, match="pip install onnxscript"):
        fusedrnn.onnx_translation_table()
