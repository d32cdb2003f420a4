"""ONNX translations of fusedrnn's forward ops, for ``torch.onnx.export``'s
``custom_translation_table``.

A program that ``torch.export.export`` made of a fusedrnn module keeps its custom ops
(``fusedrnn::lstm_fwd``, ``fusedrnn::lstm_bidir_fwd``, ...), and so does the ``dynamo=True``
exporter of torch 2.6 and 2.7, which does not say that it exports (``functional_onnx.py``
handles every exporter that does). With the table of :func:`translation_table`,
``torch.onnx.export(program, custom_translation_table=fusedrnn.onnx_translation_table())``
writes each op as one of ONNX's LSTM, GRU or RNN operators:

- gates reordered from PyTorch's (LSTM i,f,g,o; GRU r,z,n) to ONNX's (i,o,f,c; z,r,h), the
  GRU's candidate with ``linear_before_reset=1`` (PyTorch's formula);
- ``reverse`` as ``direction="reverse"``, a two-direction op as ``"bidirectional"``;
- ``lengths`` as ``sequence_lens``: ONNX's operators, like fusedrnn's ops, stop each sequence
  at its length, run the reverse direction from its last valid step and write zeros after it;
  a sequence of length 0 (which an op takes, a ``PackedSequence`` never holds) ends in its
  initial states, as in the ops, where ONNX Runtime writes zeros;
- the backward's workspaces (``ws_a``, ``ws_b``), which an inference graph never reads, as
  empty tensors.

An LSTM with a projection (``w_hr``) is refused: ONNX's LSTM has none. Requires
``onnxscript``, which ``torch.onnx.export(..., dynamo=True)`` needs anyway.
"""

import torch

from .backends import common

# PyTorch's gate blocks in ONNX's order
_ONNX_GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn_tanh": [0], "rnn_relu": [0]}
_ONNX_OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}
_ONNX_ATTRIBUTES = {"gru": {"linear_before_reset": 1}}
_ONNX_ACTIVATION = {"rnn_tanh": "Tanh", "rnn_relu": "Relu"}  # one per direction
_OWN_ARGUMENTS = 7  # w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 of one direction


def _onnxscript():
    try:
        import onnxscript
    except ImportError as error:
        raise ImportError("fusedrnn.onnx_translation_table() needs onnxscript, as "
                          "torch.onnx.export(..., dynamo=True) does: pip install onnxscript"
                          ) from error
    return onnxscript


def _layer(op, cell, x, directions, lengths):
    """One ONNX recurrent operator for ``directions``, each the ``(w_ih, w_hh, b_ih, b_hh,
    w_hr, h0, c0, reverse)`` of a fusedrnn op; returns ``Y (T, D, B, H)`` and the final states
    ``(D, B, H)`` (the cell state too for the LSTM)."""
    hidden = directions[0][1].shape[1]
    order = op.Constant(value_ints=_ONNX_GATE_ORDER[cell])
    blocks = op.Constant(value_ints=[len(_ONNX_GATE_ORDER[cell]), hidden, -1])
    one_direction = op.Constant(value_ints=[1, common.GATES[cell] * hidden, -1])
    leading = op.Constant(value_ints=[0])

    def onnx_order(weight):  # (G, K) or (G,) in PyTorch's order -> (1, G, K) in ONNX's
        return op.Reshape(op.Gather(op.Reshape(weight, blocks), order, axis=0), one_direction)

    def stacked(tensors):
        return op.Concat(*tensors, axis=0)

    if directions[0][4] is not None:
        raise RuntimeError(
            f"fusedrnn::{cell} with a projection (proj_size > 0) cannot be translated to "
            "ONNX: ONNX's LSTM operator has no projection")
    weights = stacked([onnx_order(d[0]) for d in directions])
    recurrent = stacked([onnx_order(d[1]) for d in directions])
    biases = None
    if directions[0][2] is not None:
        biases = stacked([op.Reshape(op.Concat(onnx_order(d[2]), onnx_order(d[3]), axis=1),
                                     op.Constant(value_ints=[1, -1])) for d in directions])
    sequence_lens = None if lengths is None else op.Cast(lengths, to=6)  # INT32
    initial_h = stacked([op.Unsqueeze(d[5], leading) for d in directions])
    inputs = [x, weights, recurrent, biases, sequence_lens, initial_h]
    if cell == "lstm":
        inputs.append(stacked([op.Unsqueeze(d[6], leading) for d in directions]))
    direction = ("bidirectional" if len(directions) == 2
                 else "reverse" if directions[0][7] else "forward")
    attributes = dict(_ONNX_ATTRIBUTES.get(cell, {}))
    if cell in _ONNX_ACTIVATION:
        attributes["activations"] = [_ONNX_ACTIVATION[cell]] * len(directions)
    operator = getattr(op, _ONNX_OPERATOR[cell])
    return operator(*inputs, hidden_size=hidden, direction=direction, **attributes)


def _direction_results(op, cell, x, results, index, initial, lengths):
    """``y, h_n, c_n, ws_a, ws_b`` of direction ``index`` of an ONNX operator's results, the
    final states of empty sequences the direction's ``initial`` ones (``h0, c0``)."""
    at = op.Constant(value_ints=[index])
    empty = op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), x)
    y = op.Squeeze(op.Gather(results[0], at, axis=1), op.Constant(value_ints=[1]))
    finals = [op.Squeeze(op.Gather(state, at, axis=0), op.Constant(value_ints=[0]))
              for state in results[1:]]
    if lengths is not None:
        unstarted = op.Unsqueeze(op.Equal(lengths, op.CastLike(op.Constant(value_int=0),
                                                                lengths)),
                                 op.Constant(value_ints=[1]))
        finals = [op.Where(unstarted, start, final) for start, final in zip(initial, finals)]
    c_n = finals[1] if cell == "lstm" else empty
    return y, finals[0], c_n, empty, empty


def _one_direction(op, cell):
    def translation(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend):
        results = _layer(op, cell, x, [(w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, reverse)],
                         lengths)
        return _direction_results(op, cell, x, results, 0, (h0, c0), lengths)

    translation.__name__ = f"fusedrnn_{cell}_fwd"
    return translation


def _two_directions(op, cell):
    def translation(x, *args):
        own, lengths = args[:-3], args[-3]  # then save and backend, which ONNX has no use for
        directions = [(*own[:_OWN_ARGUMENTS], False), (*own[_OWN_ARGUMENTS:], True)]
        results = _layer(op, cell, x, directions, lengths)
        return tuple(result for index, direction in enumerate(directions)
                     for result in _direction_results(op, cell, x, results, index,
                                                      direction[5:7], lengths))

    translation.__name__ = f"fusedrnn_{cell}_bidir_fwd"
    return translation


def translation_table():
    """``{fusedrnn forward op: its ONNX translation}`` for every cell, one- and two-direction,
    to pass as ``torch.onnx.export(..., custom_translation_table=...)``."""
    op = _onnxscript().opset18
    table = {}
    for cell in _ONNX_OPERATOR:
        table[getattr(torch.ops.fusedrnn, f"{cell}_fwd").default] = _one_direction(op, cell)
        table[getattr(torch.ops.fusedrnn, f"{cell}_bidir_fwd").default] = \
            _two_directions(op, cell)
    return table
