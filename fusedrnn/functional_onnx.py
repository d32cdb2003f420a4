"""Calls under ``torch.onnx.export``: the layer as torch's own recurrent ATen ops.

ONNX has LSTM, GRU and RNN operators, and both of torch's exporters (the TorchScript one and
the ``torch.export`` one, ``dynamo=True``) translate ``aten::lstm``, ``aten::gru``,
``aten::rnn_tanh``/``rnn_relu`` and the cells' ATen ops into them, or into ONNX ops that
compute the same; they cannot translate fusedrnn's custom ops. So a call that is being
exported, after fusedrnn's own checks, is made of those ATen ops on the same weights, as
``torch.nn``'s modules make theirs: the exported model holds what ``torch.nn``'s would.
An LSTM with ``proj_size`` is refused (ONNX's LSTM has no projection; torch's exporters
refuse torch.nn's, or write one that ONNX Runtime rejects). torch 2.6 and 2.7's exporter
with ``dynamo=True`` does not say that it exports (:func:`exporting` sees it from torch 2.8
on), so the custom ops reach it there, as they reach ``torch.onnx.export`` of a
``torch.export`` program: ``onnx_translation.py`` translates them.
"""

import contextlib
import sys

import torch
from torch import _VF
from torch.nn.utils.rnn import PackedSequence

_SEQUENCE_OPS = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh,
                 "rnn_relu": _VF.rnn_relu}
_CELL_OPS = {"lstm": _VF.lstm_cell, "gru": _VF.gru_cell, "rnn_tanh": _VF.rnn_tanh_cell,
             "rnn_relu": _VF.rnn_relu_cell}


def exporting():
    """Whether ``torch.onnx.export`` is running the caller. Nothing exports before
    ``torch.onnx`` is imported, and importing it costs tens of milliseconds: not done here."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


@contextlib.contextmanager
def untraced():
    """fusedrnn's checks out of the TorchScript exporter's trace: the graph holds the ATen
    ops alone, and its pass that pairs ``pack_padded_sequence`` with ``pad_packed_sequence``
    around them finds no other use of the packed data (which it refuses)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def run(plan, input, hx, weights, dropout, training):
    """The call that ``functional._prepare`` checked and planned (``plan``) on the caller's
    ``input``, ``hx`` and ``weights``, as torch's ATen ops, the way ``torch.nn``'s modules
    call them; the results as ``functional._layers`` returns them."""
    cell = plan.cell
    lstm = cell == "lstm"
    if plan.proj_size > 0:
        raise RuntimeError(
            f"LSTM: proj_size={plan.proj_size} cannot be exported to ONNX: ONNX's LSTM "
            "operator has no projection (torch's exporters refuse torch.nn's LSTM with "
            "proj_size too, or write one that ONNX Runtime rejects)")
    sizes = [shape[2] for shape in plan.state_shapes]
    if plan.step_cell:  # input (1, B, I), hx the cell's own (B, S) states or None
        x = input[0]
        if hx is not None:
            states = tuple(hx) if lstm else hx
        else:
            zeros = [x.new_zeros(x.shape[0], size) for size in sizes]
            states = tuple(zeros) if lstm else zeros[0]
        b_ih, b_hh = (weights[2], weights[3]) if plan.bias else (None, None)
        result = _CELL_OPS[cell](x, states, weights[0], weights[1], b_ih, b_hh)
        finals = tuple(result) if lstm else result
        return (finals[0] if lstm else finals).unsqueeze(0), finals

    packed = isinstance(input, PackedSequence)
    x = input if plan.batched else input.unsqueeze(0 if plan.batch_first else 1)
    if hx is None:
        # a packed batch as torch.nn takes it: a tensor the trace follows, not a constant
        batch = input.batch_sizes[0] if packed else x.shape[0 if plan.batch_first else 1]
        count = plan.num_layers * plan.directions
        states = [(input.data if packed else x).new_zeros(count, batch, size) for size in sizes]
    else:
        states = list(hx) if lstm else [hx]
        if not plan.batched:
            states = [s.unsqueeze(1) for s in states]
        if packed and input.sorted_indices is not None:
            states = [s.index_select(1, input.sorted_indices) for s in states]
    states = tuple(states) if lstm else states[0]
    options = (plan.bias, plan.num_layers, float(dropout), training, plan.directions == 2)
    if packed:
        result = _SEQUENCE_OPS[cell](input.data, input.batch_sizes, states, weights, *options)
        output = PackedSequence(result[0], input.batch_sizes, input.sorted_indices,
                                input.unsorted_indices)
    else:
        result = _SEQUENCE_OPS[cell](x, states, weights, *options, plan.batch_first)
        output = result[0] if plan.batched else result[0].squeeze(0 if plan.batch_first else 1)
    finals = list(result[1:])
    if packed and input.unsorted_indices is not None:
        finals = [f.index_select(1, input.unsorted_indices) for f in finals]
    if not plan.batched:
        finals = [f.squeeze(1) for f in finals]
    return output, (tuple(finals) if lstm else finals[0])
