"""The dtypes ``torch.nn`` gives a recurrent call under autocast, and the casts that give a
``functional`` call the same (see :func:`dtypes`)."""

import functools

import torch

from ._compile import constant_result


def dtypes(cell, x, hx, packed, full, proj_size, step_cell):
    """Under autocast, the dtypes torch.nn gives ``cell``: the dtype its call runs in and
    that of ``output`` and ``h_n``; ``(None, None)`` outside autocast.

    Autocast lowers cuDNN's RNN op for every cell, and on the CPU ``mkldnn_rnn_layer``
    (nn.LSTM on padded input without projection, where oneDNN takes the input's dtype:
    :func:`_onednn_runs`; on packed input too where every sequence is ``full`` in torch
    versions that run such input as padded: :func:`_full_packed_lstm_as_padded`) and the
    products of nn.RNN: these run in the autocast dtype. On its other CPU paths (nn.GRU, a
    packed or projected nn.LSTM, nn.LSTMCell, nn.GRUCell) torch lowers only the products,
    and the states' dtype (h_0's, or the input's without ``hx``) meets the products' in the
    cell's arithmetic: the states come out in the promotion of the two (a float16 state under
    bfloat16 autocast becomes float32). There the call runs in that dtype (the products too:
    as accurate, never less), and a projection's output and ``h_n`` come out in the autocast
    dtype, as the products give them in torch.nn."""
    if not torch.compiler.is_compiling() and not torch._C._is_any_autocast_enabled():
        return None, None  # one C call, where the checks below take microseconds
    device_type = x.device.type
    # Dynamo cannot trace is_autocast_available in torch 2.11 (fullgraph fails; 2.14 can);
    # a traced call is on a device that it compiles for, which has autocast.
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device_type):
        return None, None
    if not torch.is_autocast_enabled(device_type):
        return None, None
    lowered = torch.get_autocast_dtype(device_type)
    padded = not packed or (full and _full_packed_lstm_as_padded())
    onednn = cell == "lstm" and padded and not (proj_size > 0 or step_cell) and _onednn_runs(x)
    if device_type != "cpu" or cell.startswith("rnn") or onednn:
        return lowered, lowered
    h_0 = hx[0] if cell == "lstm" and isinstance(hx, (tuple, list)) and hx else hx
    state = h_0.dtype if isinstance(h_0, torch.Tensor) else x.dtype
    if not state.is_floating_point:  # refused by the states' checks
        return lowered, lowered
    state = torch.promote_types(state, lowered)
    return state, (lowered if proj_size > 0 else state)


def _onednn_runs(x):
    """Whether ``torch.nn.LSTM`` runs a CPU call on ``x`` through oneDNN (ATen's
    ``use_mkldnn``): when oneDNN is built and enabled, for float32 input, bfloat16 where the
    CPU has oneDNN's bfloat16, float16 where it has its float16 and grad mode is off."""
    enabled, bfloat16, float16 = _onednn_dtypes()
    if not enabled or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if x.dtype == torch.float16:
        return float16 and not torch.is_grad_enabled()
    return x.dtype == torch.float32 or bfloat16


@constant_result
def _full_packed_lstm_as_padded():
    """Whether this torch runs ``nn.LSTM`` on packed input whose sequences are all full as
    on padded input (oneDNN's path under autocast: 2.14 does, 2.11 does not)."""
    return _ask_torch_full_packed()


@functools.cache
def _ask_torch_full_packed():
    """:func:`_full_packed_lstm_as_padded` asked of torch.nn itself, once, on a tiny call
    (its weights drawn from a forked generator)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        lstm = torch.nn.LSTM(2, 2)
        x = torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(2, 1, 2), torch.tensor([2]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lstm(x)[0].data.dtype == torch.bfloat16


@constant_result  # Dynamo cannot trace torch.backends.mkldnn.is_available
def _onednn_dtypes():
    """``(oneDNN built and enabled, its bfloat16 on this CPU, its float16)``."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False, False, False
    return (True, *_cpu_onednn_dtypes())


@functools.cache
def _cpu_onednn_dtypes():
    """This CPU's ``(bfloat16, float16)`` in oneDNN."""
    return (bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()))


def cast(name, x, states, weights, dtype):
    """Under autocast, the floating tensors but float64 ones in ``dtype`` (see
    :func:`dtypes`), as autocast casts the arguments of the ops it lowers; the
    results must then agree."""
    if dtype is None:
        return x, states, weights
    with torch.autocast(x.device.type, enabled=False):
        cast = [t if t.dtype == torch.float64 else t.to(dtype) for t in [x] + states + weights]
    kinds = {t.dtype for t in cast}
    if len(kinds) > 1:
        raise ValueError(f"{name}: under autocast to {dtype}, float64 tensors stay float64 and "
                         f"the others become {dtype}; got a mix ({sorted(map(str, kinds))}): "
                         "make the input, states and weights all float64 or none")
    return cast[0], cast[1:1 + len(states)], cast[1 + len(states):]
