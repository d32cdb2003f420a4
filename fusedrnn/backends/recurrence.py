"""The backends built on the compiled recurrence ops, ``cpu`` and ``cuda``.

Per step, one BLAS product into a preallocated buffer and one fused pointwise pass, the time
loop in C++ (the cpu backend's adds the biases there; the cuda backend's input projection
adds the LSTM's and RNN's: ``bias_in_projection``); here in Python only the input projection
and the weight gradients (one product over all steps each) and the ops' schemas, so they
exist without the extensions:

``fusedrnn::lstm_recurrence_fwd(xproj (T,B,4H), bias (4H)?, w_hh (4H,H), h0, c0 (B,H),
lengths?, reverse, save) -> (y, h_n, c_n, gates, cells)``, ``fusedrnn::lstm_recurrence_bwd(grad_y, grad_h_n, grad_c_n,
w_hh, c0, lengths?, gates, cells, reverse) -> (dgates, grad_h0, grad_c0)``,
``fusedrnn::gru_recurrence_fwd(xproj (T,B,3H), b_ih?, w_hh, b_hh?, h0, lengths?, reverse,
save) -> (y, h_n, gates, hidden_n)``, ``fusedrnn::gru_recurrence_bwd(grad_y, grad_h_n, w_hh,
h_prev (T,B,H), lengths?, gates, hidden_n, reverse) -> (dgates_in, dgates_hid, grad_h0)``.

``fusedrnn::rnn_recurrence_fwd(xproj (T,B,H), bias (H)?, w_hh (H,H), h0, lengths?, reverse,
relu) -> (y, h_n)`` and ``fusedrnn::rnn_recurrence_bwd(grad_y, grad_h_n, w_hh, y, lengths?,
reverse, relu) -> (dpre, grad_h0)`` (the Elman cells).

``fusedrnn::{lstm,gru,rnn}_bptt`` (CPU kernels only) are a backward above plus the products
over all steps, returning the gradients of x, W_ih, W_hh and the biases, then of the
initial states: the cpu backend's backward, one op per layer and direction;
``fusedrnn::input_projection(x, w_ih)`` (CPU only) is its input projection, and
``fusedrnn::{lstm,gru,rnn}_forward`` (CPU only) its forward of one layer and direction: the
projection, then the recurrence op with both biases, in one call.

``fusedrnn::lstm_proj_recurrence_fwd(xproj, bias?, w_hh (4H,P), w_hr (P,H), h0 (B,P), c0,
lengths?, reverse, save)`` is the LSTM with a projection (proj_size P); its backward is
``fusedrnn::lstm_proj_recurrence_bwd(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, c0, lengths?,
gates, cells, reverse) -> (dgates, dh_steps, grad_h0, grad_c0)`` on CUDA (CUDA kernels only)
and part of ``lstm_bptt`` on the CPU.

``fusedrnn::{lstm,gru}_persistent_{fwd,bwd}`` (CUDA kernels only) are the LSTM and GRU ops
above with two more arguments, ``units`` and ``cluster``: the cuda backend's persistent
kernels (``cuda_plan``).

``fusedrnn._cpu`` registers their CPU kernels and ``fusedrnn._C`` their CUDA kernels (full
contracts in ``csrc/cpu/recurrence_cpu.h`` and ``csrc/kernels.h``). Saved tensors have the
reference backend's layout, so the backends are interchangeable; without ``save``
(nothing will be differentiated) they are empty ``(0,)`` tensors.
"""

import torch

from . import Availability, Backend, common

# The ops with kernels on every device of these backends, then the CPU-only ones.
SCHEMAS = {
    "lstm_recurrence_fwd": "(Tensor xproj, Tensor? bias, Tensor w_hh, Tensor h0, Tensor c0, "
                           "Tensor? lengths, bool reverse, bool save) "
                           "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "lstm_recurrence_bwd": "(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, "
                           "Tensor c0, Tensor? lengths, Tensor gates, Tensor cells, bool reverse)"
                           " -> (Tensor, Tensor, Tensor)",
    "gru_recurrence_fwd": "(Tensor xproj, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, Tensor h0, "
                          "Tensor? lengths, bool reverse, bool save) "
                          "-> (Tensor, Tensor, Tensor, Tensor)",
    "gru_recurrence_bwd": "(Tensor grad_y, Tensor grad_h_n, Tensor w_hh, Tensor h_prev, "
                          "Tensor? lengths, Tensor gates, Tensor hidden_n, bool reverse) "
                          "-> (Tensor, Tensor, Tensor)",
    # the LSTM with a projection (proj_size: w_hh (4H,P), w_hr (P,H), h0 (B,P),
    # y = (o * tanh(c)) @ w_hr^T)
    "lstm_proj_recurrence_fwd": "(Tensor xproj, Tensor? bias, Tensor w_hh, Tensor w_hr, "
                                "Tensor h0, Tensor c0, Tensor? lengths, bool reverse, bool save)"
                                " -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "rnn_recurrence_fwd": "(Tensor xproj, Tensor? bias, Tensor w_hh, Tensor h0, Tensor? lengths, "
                          "bool reverse, bool relu) -> (Tensor, Tensor)",
    "rnn_recurrence_bwd": "(Tensor grad_y, Tensor grad_h_n, Tensor w_hh, Tensor y, "
                          "Tensor? lengths, bool reverse, bool relu) -> (Tensor, Tensor)",
}
# The ops with CPU kernels only: the CPU
# backend's whole backward of one layer and direction, a recurrence backward above plus the
# products over all steps (gradients of x, W_ih, W_hh, biases and W_hr; (0,) tensors for
# what does not exist), which the kernels overlap with the time loop; and the input
# projection into a pooled workspace.
CPU_SCHEMAS = {
    "lstm_bptt": "(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor w_ih, "
                 "Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, Tensor y, "
                 "Tensor gates, Tensor cells, bool reverse, bool has_bias) "
                 "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "gru_bptt": "(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor w_ih, Tensor w_hh, "
                "Tensor h0, Tensor? lengths, Tensor y, Tensor gates, Tensor hidden_n, "
                "bool reverse, bool has_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "rnn_bptt": "(Tensor grad_y, Tensor grad_h_n, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, "
                "Tensor? lengths, Tensor y, bool reverse, bool relu, bool has_bias) "
                "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "input_projection": "(Tensor x, Tensor w_ih) -> Tensor",
    # The cpu backend's forward of one layer and direction, one op per cell: the input
    # projection, then the time loop with both biases; the op layer's forward results.
    "lstm_forward": "(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
                    "Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, bool reverse, "
                    "bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "gru_forward": "(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
                   "Tensor? lengths, bool reverse, bool save) "
                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "rnn_forward": "(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
                   "Tensor? lengths, bool reverse, bool relu) "
                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}

# The ops with CUDA kernels only: the backward of the projected LSTM, returning dgates, the
# gradient of each step's projected state (zero past a row's end; the gradient of W_hr is
# its product with o * tanh(c) over all steps), grad_h0 and grad_c0 (the cpu backend's is in
# lstm_bptt); and the cuda backend's persistent kernels, the LSTM and GRU recurrence ops with
# two more arguments, as ``cuda_plan`` chose: ``units``, the hidden units per block, and
# ``cluster``, whether the blocks meet in thread-block clusters or across the grid.
PERSISTENT_SCHEMAS = {name.replace("_recurrence_", "_persistent_"):
                      SCHEMAS[name].replace(") -> (", ", int units, bool cluster) -> (", 1)
                      for name in ("lstm_recurrence_fwd", "lstm_recurrence_bwd",
                                   "gru_recurrence_fwd", "gru_recurrence_bwd")}
CUDA_SCHEMAS = {
    "lstm_proj_recurrence_bwd": "(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, "
                                "Tensor w_hh, Tensor w_hr, Tensor c0, Tensor? lengths, "
                                "Tensor gates, Tensor cells, bool reverse) "
                                "-> (Tensor, Tensor, Tensor, Tensor)",
    **PERSISTENT_SCHEMAS,
}

_library = torch.library.Library("fusedrnn", "FRAGMENT")
for _name, _schema in {**SCHEMAS, **CPU_SCHEMAS, **CUDA_SCHEMAS}.items():
    _library.define(_name + _schema)


def _saved(save, *shape, like):
    return like.new_empty(shape) if save else like.new_empty(0)


@torch.library.register_fake("fusedrnn::lstm_recurrence_fwd")
def _lstm_recurrence_fwd_fake(xproj, bias, w_hh, h0, c0, lengths, reverse, save):
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    return (xproj.new_empty(steps, batch, hidden), torch.empty_like(h0), torch.empty_like(c0),
            _saved(save, *xproj.shape, like=xproj), _saved(save, steps, batch, hidden, like=xproj))


@torch.library.register_fake("fusedrnn::lstm_recurrence_bwd")
def _lstm_recurrence_bwd_fake(grad_y, grad_h_n, grad_c_n, w_hh, c0, lengths, gates, cells,
                              reverse):
    return torch.empty_like(gates), torch.empty_like(grad_h_n), torch.empty_like(grad_c_n)


@torch.library.register_fake("fusedrnn::gru_recurrence_fwd")
def _gru_recurrence_fwd_fake(xproj, b_ih, w_hh, b_hh, h0, lengths, reverse, save):
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    return (xproj.new_empty(steps, batch, hidden), torch.empty_like(h0),
            _saved(save, *xproj.shape, like=xproj), _saved(save, steps, batch, hidden, like=xproj))


@torch.library.register_fake("fusedrnn::gru_recurrence_bwd")
def _gru_recurrence_bwd_fake(grad_y, grad_h_n, w_hh, h_prev, lengths, gates, hidden_n, reverse):
    return torch.empty_like(gates), torch.empty_like(gates), torch.empty_like(grad_h_n)


def _register_persistent_fakes():
    """The persistent ops' outputs are the recurrence ops': the same fakes, ``units`` and
    ``cluster`` dropped."""
    fakes = {"lstm_persistent_fwd": _lstm_recurrence_fwd_fake,
             "lstm_persistent_bwd": _lstm_recurrence_bwd_fake,
             "gru_persistent_fwd": _gru_recurrence_fwd_fake,
             "gru_persistent_bwd": _gru_recurrence_bwd_fake}
    for name, fake in fakes.items():
        torch.library.register_fake(f"fusedrnn::{name}")(_without_plan_args(fake))


def _without_plan_args(fake):
    def persistent_fake(*args, **kwargs):
        named = [kwargs.pop(name) for name in ("units", "cluster") if name in kwargs]
        return fake(*args[:len(args) - (2 - len(named))], **kwargs)

    return persistent_fake


_register_persistent_fakes()


@torch.library.register_fake("fusedrnn::rnn_recurrence_fwd")
def _(xproj, bias, w_hh, h0, lengths, reverse, relu):
    return torch.empty_like(xproj), torch.empty_like(h0)


@torch.library.register_fake("fusedrnn::rnn_recurrence_bwd")
def _(grad_y, grad_h_n, w_hh, y, lengths, reverse, relu):
    return torch.empty_like(y), torch.empty_like(grad_h_n)


def _input_weight_grads(x, w_ih, w_hh, has_bias):
    bias = w_ih.new_empty(w_ih.shape[0] if has_bias else 0)
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh), bias,
            torch.empty_like(bias))


@torch.library.register_fake("fusedrnn::input_projection")
def _(x, w_ih):
    return x.new_empty(x.shape[0], x.shape[1], w_ih.shape[0])


def _layer_forward_fake(cell, x, w_ih, h0, save):
    """The results of ``fusedrnn::{cell}_forward``: the op layer's forward results, as its
    fake kernel makes them (imported here: ``ops`` imports the backends)."""
    from ..ops import fake_forward

    return fake_forward(cell)(x, w_ih, None, None, None, None, h0, None, None, False, save,
                              "cpu")


@torch.library.register_fake("fusedrnn::lstm_forward")
def _(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save):
    return _layer_forward_fake("lstm", x, w_ih, h0, save)


@torch.library.register_fake("fusedrnn::gru_forward")
def _(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, save):
    return _layer_forward_fake("gru", x, w_ih, h0, save)


@torch.library.register_fake("fusedrnn::rnn_forward")
def _(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, relu):
    return _layer_forward_fake("rnn_tanh", x, w_ih, h0, False)


@torch.library.register_fake("fusedrnn::lstm_proj_recurrence_fwd")
def _(xproj, bias, w_hh, w_hr, h0, c0, lengths, reverse, save):
    steps, batch, _ = xproj.shape
    hidden = w_hr.shape[1]
    return (xproj.new_empty(steps, batch, w_hr.shape[0]), torch.empty_like(h0),
            torch.empty_like(c0), _saved(save, *xproj.shape, like=xproj),
            _saved(save, steps, batch, hidden, like=xproj))


@torch.library.register_fake("fusedrnn::lstm_proj_recurrence_bwd")
def _(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, c0, lengths, gates, cells, reverse):
    return (torch.empty_like(gates), torch.empty_like(grad_y), torch.empty_like(grad_h_n),
            torch.empty_like(grad_c_n))


@torch.library.register_fake("fusedrnn::lstm_bptt")
def _(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, cells,
      reverse, has_bias):
    grad_w_hr = x.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
    return (*_input_weight_grads(x, w_ih, w_hh, has_bias), grad_w_hr,
            torch.empty_like(grad_h_n), torch.empty_like(grad_c_n))


@torch.library.register_fake("fusedrnn::gru_bptt")
def _(grad_y, grad_h_n, x, w_ih, w_hh, h0, lengths, y, gates, hidden_n, reverse, has_bias):
    return (*_input_weight_grads(x, w_ih, w_hh, has_bias), torch.empty_like(grad_h_n))


@torch.library.register_fake("fusedrnn::rnn_bptt")
def _(grad_y, grad_h_n, x, w_ih, w_hh, h0, lengths, y, reverse, relu, has_bias):
    return (*_input_weight_grads(x, w_ih, w_hh, has_bias), torch.empty_like(grad_h_n))


class RecurrenceBackend(Backend):
    """A backend whose time loops are the compiled recurrence ops of ``extension``, for
    tensors on ``device_type`` in ``dtypes``, of the ``cells`` (LSTM without projection)."""

    extension = None
    device_type = ""
    dtypes = ()
    cells = ()
    projection = False  # kernels for the LSTM's proj_size
    op_namespace = "fusedrnn"  # where the ops are: torch.ops.<op_namespace>.lstm_recurrence_fwd
    # The LSTM's and RNN's summed bias added by the input projection's product (its epilogue)
    # instead of by the time loop: the CUDA time loops add it in a pass of their own over the
    # projection, into a new buffer; the CPU ones add it in the loop, at no cost.
    bias_in_projection = False

    def available(self):
        return Availability(*self.extension.status())

    def supports(self, device, dtype, call=None):
        label = self.device_type.upper()
        if device.type != self.device_type:
            return False, f"the {label} kernels need {label} tensors, got {device.type}"
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return False, f"dtype {dtype} is not one of {names}"
        if call is not None and call.cell not in self.cells:
            only = ", ".join(self.cells)
            return False, f"no {label} kernel for the {call.cell} cell (only {only})"
        if call is not None and call.state != call.hidden and not self.projection:
            return False, f"proj_size is not supported by the {label} kernels yet"
        return True, ""

    def recurrence_op(self, cell, w_hh, backward):
        """The op running the time loop of ``cell`` (``"lstm"``, ``"gru"``) and the extra
        arguments it takes after the recurrence op's: ``fusedrnn::{cell}_recurrence_{fwd,bwd}``
        here; the cuda backend may choose its persistent kernels instead."""
        name = f"{cell}_recurrence_{'bwd' if backward else 'fwd'}"
        return getattr(self.ops, name), ()

    @property
    def ops(self):
        return getattr(torch.ops, self.op_namespace)

    def input_projection(self, x, w_ih):
        """``x @ w_ih^T`` for all steps, ``(T, B, G)``, the biases left to the time loop."""
        return common.input_projection(x, w_ih, None)

    def forward(self, cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save):
        self.extension.load()
        bias = None if b_ih is None or cell == "gru" else b_ih + b_hh
        if bias is not None and self.bias_in_projection:
            xproj, bias = common.input_projection(x, w_ih, bias), None
        else:
            xproj = self.input_projection(x, w_ih)
        if cell.startswith("rnn"):
            y, h_n = self.ops.rnn_recurrence_fwd(xproj, bias, w_hh, h0, lengths, reverse,
                                                 cell == "rnn_relu")
            return y, h_n, common.empty(x), common.empty(x), common.empty(x)
        if cell == "lstm":
            if w_hr is not None:
                return self.ops.lstm_proj_recurrence_fwd(xproj, bias, w_hh, w_hr, h0, c0,
                                                         lengths, reverse, save)
            op, extra = self.recurrence_op("lstm", w_hh, False)
            return op(xproj, bias, w_hh, h0, c0, lengths, reverse, save, *extra)
        op, extra = self.recurrence_op("gru", w_hh, False)
        y, h_n, gates, hidden_n = op(xproj, b_ih, w_hh, b_hh, h0, lengths, reverse, save, *extra)
        return y, h_n, common.empty(x), gates, hidden_n

    def backward(self, cell, grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y,
                 ws_a, ws_b, reverse, has_bias):
        """The recurrence backward op, then the products over all steps here (the cpu
        backend overrides this with its ``*_bptt`` ops)."""
        self.extension.load()
        mask = common.active_mask(lengths, x.shape[0])
        h_prev = common.PreviousStates(y, h0, mask, reverse)
        if cell.startswith("rnn"):
            dpre, dh0 = self.ops.rnn_recurrence_bwd(grad_y, grad_hn, w_hh, y, lengths,
                                                    reverse, cell == "rnn_relu")
            grads = common.input_and_weight_grads(x, w_ih, dpre, dpre, h_prev, has_bias)
            return grads + (common.empty(x), dh0, common.empty(x))
        if cell == "lstm" and w_hr is not None:
            dgates, dh_steps, dh0, dc0 = self.ops.lstm_proj_recurrence_bwd(
                grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, lengths, ws_a, ws_b, reverse)
            grads = common.input_and_weight_grads(x, w_ih, dgates, dgates, h_prev, has_bias)
            return grads + (common.projection_weight_grad(dh_steps, ws_a, ws_b, mask), dh0, dc0)
        op, extra = self.recurrence_op(cell, w_hh, True)
        if cell == "lstm":
            dgates, dh0, dc0 = op(grad_y, grad_hn, grad_cn, w_hh, c0, lengths, ws_a, ws_b,
                                  reverse, *extra)
            grads = common.input_and_weight_grads(x, w_ih, dgates, dgates, h_prev, has_bias)
            return grads + (common.empty(x), dh0, dc0)
        h_prev = h_prev.tensor().contiguous()  # the GRU step kernel reads it
        dgates_in, dgates_hid, dh0 = op(grad_y, grad_hn, w_hh, h_prev, lengths, ws_a, ws_b,
                                        reverse, *extra)
        grads = common.input_and_weight_grads(x, w_ih, dgates_in, dgates_hid, h_prev, has_bias)
        return grads + (common.empty(x), dh0, common.empty(x))
