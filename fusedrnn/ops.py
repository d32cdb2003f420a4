"""The operator layer: one forward and one backward op per cell, in the ``fusedrnn`` namespace.

Ops: ``fusedrnn::{cell}_fwd`` and ``fusedrnn::{cell}_bwd`` for cell in
``lstm, gru, rnn_tanh, rnn_relu``. Each runs one layer in one direction over a padded,
time-major sequence; layers, directions, dropout and packing live above, in
``functional.py`` (a bidirectional layer calls the two-direction ops of
``ops_bidirectional.py``, built on these schemas). The schemas are defined here in Python, so they exist without any
compiled extension; a backend only adds an implementation, picked by the ``backend``
argument (a string, so ``torch.compile`` sees a constant).

Every cell shares one schema (arguments a cell does not use are ``None``)::

    {cell}_fwd(x (T,B,I), w_ih (G,I), w_hh (G,P), b_ih (G)?, b_hh (G)?, w_hr (P,H)?,
               h0 (B,P), c0 (B,H)?, lengths (B,) int64?, reverse, save, backend)
        -> y (T,B,P), h_n (B,P), c_n, ws_a, ws_b          (see backends/reference.py)
    {cell}_bwd(grad_y, grad_h_n, grad_c_n?, x, w_ih, w_hh, w_hr?, h0, c0?, lengths?,
               y, ws_a, ws_b, reverse, has_bias, backend)
        -> grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr, grad_h0, grad_c0

Absent results (no bias, no projection, no cell state) are empty ``(0,)`` tensors, and so
are the workspaces ``ws_a``, ``ws_b`` without ``save``: the functional layer passes ``save``
only when autograd records the call, and a backward through a forward run without it
recomputes it (:func:`recomputes`). The backward op is the hand-written backpropagation
through time, registered as the forward's autograd formula.
"""

from typing import Optional, Tuple

import torch

from . import backends
from .backends import common
from .backends.reference import differentiable

GATES = common.GATES
# Cells whose forward saves gates and a second per-step tensor for the backward.
_SAVES_GATES = ("lstm", "gru")


def below_autograd(op):
    """``op`` called below the autograd dispatch keys: for a call nothing will differentiate
    (no ``save``), where the ops' autograd layer, Python code of ``torch.library``'s, would
    only pass it on (about 9 us of a 78 us module call at batch 1, hidden 8, on the 2-core
    Xeon). Not under torch.compile, whose graphs hold the plain call, nor under a
    differentiating transform, which differentiates through autograd."""

    def call(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return call


_IMPLEMENTATION = {}  # a dispatching op -> the Python function its kernels run
_PARAMETER = torch.nn.Parameter
# 60 ns a tensor, so asked of plain tensors only (a Parameter is never a legacy batched one)
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def register_implementation(op, function):
    """Note that ``op`` runs ``function`` on every device, for :func:`direct` and :func:`call`:
    called below the autograd dispatch keys, as the op's own kernel calls it (the ATen calls
    of the compiled kernels inside would otherwise meet autograd: its checks and its views of
    tensors that require a gradient)."""
    _IMPLEMENTATION[op] = below_autograd(function)


def dispatcher_passes_on(tensors):
    """Whether an eager call of a dispatching op on ``tensors`` would meet
    nothing in the dispatcher but the op's own Python implementation: no torch.compile, jit
    trace, torch.func transform, dispatch or torch-function mode, profiler or autocast;
    plain CPU or CUDA tensors, no subclasses (fake, meta or functorch-wrapped ones have
    kernels of their own), and none of the legacy vmap's batched tensors: plain
    ``torch.Tensor``s with no storage, outside any transform, that
    ``torch.autograd.grad(..., is_grads_batched=True)`` (and ``jacobian(vectorize=True)``)
    passes to the backward formulas, and only the dispatcher's batching fallback unbatches.
    The ``torch.library`` shell of such a call only checks its arguments and outputs: 16 us
    of the 37 us an LSTM step at batch 1, hidden 128 took on the 2-core AMD EPYC."""
    c = torch._C
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or c._functorch.get_interpreter_stack() or c._len_torch_dispatch_stack()
            or c._is_torch_function_mode_enabled() or c._autograd._profiler_enabled()
            or c._is_any_autocast_enabled()):
        return False
    return all((type(t) is _PARAMETER or type(t) is torch.Tensor and not _legacy_batched(t))
               and (t.is_cpu or t.is_cuda) for t in tensors)


def direct(op, backend=None, dtype=None):
    """The Python function ``op`` runs, to call without the dispatcher where
    :func:`dispatcher_passes_on`, or None for an op with kernels of its own (a backend's).
    With the ``backend`` and ``dtype`` of a call that autograd does not record, a
    dispatching forward op's: the backend's own function of it
    (:meth:`~fusedrnn.backends.Backend.direct_forward`) where it has one."""
    cell = _FORWARD_CELL.get(op) if backend is not None else None
    kernel = cell and backends.get(backend).direct_forward(cell, dtype)
    if not kernel:
        return _IMPLEMENTATION.get(op)

    def call(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, _backend):
        return kernel(*_contiguous(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths), reverse,
                      save)

    return call


def call(op, *args):
    """``op(*args)``, or the Python function ``op`` runs called directly where the dispatcher
    would only pass the call on (:func:`dispatcher_passes_on` its tensors): for the backward
    ops, called from their forward's autograd formula."""
    implementation = _IMPLEMENTATION.get(op)
    if implementation is not None and dispatcher_passes_on(
            [a for a in args if isinstance(a, torch.Tensor)]):
        return implementation(*args)
    return op(*args)


_EAGER = {}  # (a forward op, direct) -> its autograd formula as an autograd.Function's apply


def register_autograd_formula(forward_op, backward, setup_context):
    """``forward_op.register_autograd(backward, setup_context=setup_context)``, and the same
    formula as an ``autograd.Function`` for :func:`eager_autograd`."""
    forward_op.register_autograd(backward, setup_context=setup_context)

    def eager(run):
        class EagerAutograd(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                output = run(*args)
                setup_context(ctx, args, output)
                return output

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        return EagerAutograd.apply

    _EAGER[forward_op, False] = eager(below_autograd(forward_op))
    if forward_op in _IMPLEMENTATION:
        _EAGER[forward_op, True] = eager(lambda *args: _IMPLEMENTATION[forward_op](*args))


def eager_autograd(op, direct=False):
    """``op`` with its autograd formula applied directly, for an eager call that autograd
    records (not under torch.compile, a trace or a torch.func transform, which need the op
    itself); ``direct``: the formula's forward calls the op's implementation itself
    (:func:`dispatcher_passes_on`). The ops' own autograd layer, torch.library's, refills the
    defaulted arguments of every recorded call first (``torch._library.utils.fill_defaults``,
    quadratic in the schema's length): 28 us a call of a direction's op, 62 us of the
    two-direction op, on a 2-core AMD EPYC, where a training step of an LSTM at batch 1,
    hidden 32, 10 steps took 445 us through that layer, 355 without it, to torch.nn's 490."""
    return _EAGER.get((op, direct)) or _EAGER.get((op, False), op)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def fake_forward(cell):
    def fake(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend):
        steps, batch = x.shape[0], x.shape[1]
        hidden = w_ih.shape[0] // GATES[cell]
        y = x.new_empty(steps, batch, h0.shape[1])
        h_n = x.new_empty(batch, h0.shape[1])
        c_n = x.new_empty(batch, hidden) if cell == "lstm" else x.new_empty(0)
        if cell in _SAVES_GATES and save:
            ws_a = x.new_empty(steps, batch, w_ih.shape[0])
            ws_b = x.new_empty(steps, batch, hidden)
        else:
            ws_a, ws_b = x.new_empty(0), x.new_empty(0)
        return y, h_n, c_n, ws_a, ws_b

    return fake


def _contiguous_like(t, like=None):
    """A contiguous tensor of ``t``'s shape, or an empty ``(0,)`` one like ``like`` for None."""
    return like.new_empty(0) if t is None else t.new_empty(t.shape)


Tensor = torch.Tensor
MaybeTensor = Optional[torch.Tensor]
FORWARD_SCHEMA = (
    "(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor h0, "
    "Tensor? c0, Tensor? lengths, bool reverse, bool save, str backend) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
BACKWARD_SCHEMA = (
    "(Tensor grad_y, Tensor grad_h_n, Tensor? grad_c_n, Tensor x, Tensor w_ih, Tensor w_hh, "
    "Tensor? w_hr, Tensor h0, Tensor? c0, Tensor? lengths, Tensor y, Tensor ws_a, Tensor ws_b, "
    "bool reverse, bool has_bias, str backend) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def define_pair(cell, suffix, forward_impl, backward_impl, maker=torch.library.custom_op):
    """Define ``fusedrnn::{cell}_fwd{suffix}`` and ``fusedrnn::{cell}_bwd{suffix}`` with the
    shared schemas, the backward registered as the forward's autograd formula.

    ``forward_impl(*tensors, reverse, save, backend)`` and
    ``backward_impl(*tensors, reverse, has_bias, backend)`` receive contiguous tensors
    (autograd hands out expanded, stride-0 gradients) and the flags. ``maker`` is ``torch.library.custom_op`` (opaque to ``torch.compile``, with the
    fake kernels here) or ``torch.library.triton_op`` (traced through by it).
    """

    # The annotations spell the schemas out again: torch 2.11's triton_op ignores ``schema``
    # and infers one from them (tests/test_ops.py checks that the two agree).
    def forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: MaybeTensor, b_hh: MaybeTensor,
                w_hr: MaybeTensor, h0: Tensor, c0: MaybeTensor, lengths: MaybeTensor,
                reverse: bool, save: bool, backend: str) -> Tuple[(Tensor,) * 5]:
        with common.without_autocast(x.device):
            return forward_impl(*_contiguous(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths),
                                reverse, save, backend)

    def backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: MaybeTensor, x: Tensor,
                 w_ih: Tensor, w_hh: Tensor, w_hr: MaybeTensor, h0: Tensor, c0: MaybeTensor,
                 lengths: MaybeTensor, y: Tensor, ws_a: Tensor, ws_b: Tensor, reverse: bool,
                 has_bias: bool, backend: str) -> Tuple[(Tensor,) * 8]:
        # The padding never reaches a gradient, whatever it holds: the backends' products over
        # all steps would carry its NaN or inf (times a zero gradient) into the weights'.
        grad_y, x = common.without_padding(lengths, grad_y, x)
        tensors = _contiguous(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                              y, ws_a, ws_b)
        with common.without_autocast(x.device):
            return backward_impl(*tensors, reverse, has_bias, backend)

    forward_op = maker(f"fusedrnn::{cell}_fwd{suffix}", forward, mutates_args=(),
                       schema=FORWARD_SCHEMA)
    backward_op = maker(f"fusedrnn::{cell}_bwd{suffix}", backward, mutates_args=(),
                        schema=BACKWARD_SCHEMA)
    if maker is torch.library.custom_op:
        register_implementation(forward_op, forward)
        register_implementation(backward_op, backward)
        forward_op.register_fake(fake_forward(cell))
        backward_op.register_fake(fake_backward)
    register_autograd(cell, forward_op, backward_op)
    return forward_op, backward_op


def fake_backward(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a,
                   ws_b, reverse, has_bias, backend):
    """Contiguous gradients, as the backends return them (``empty_like`` would copy the
    strides of a transposed ``batch_first`` input, and inductor checks them)."""
    bias_grad = w_ih.new_empty(w_ih.shape[0] if has_bias else 0)
    return (_contiguous_like(x), _contiguous_like(w_ih), _contiguous_like(w_hh), bias_grad,
            _contiguous_like(bias_grad), _contiguous_like(w_hr, x), _contiguous_like(h0),
            _contiguous_like(c0, x))


def recomputes(ctx, save):
    """Whether the backward of a forward that autograd records must recompute that forward:
    one run without ``save`` kept no workspaces. That happens only to a graph captured with
    autograd not recording (a ``torch.export`` program made under ``torch.no_grad``), run or
    compiled later with grad enabled (inductor, compiling such a graph for
    ``aoti_compile_and_package``, runs its ops on parameters that require grad). Such a
    backward runs the forward again with ``save``, from the saved inputs: a layer-sized
    activation checkpoint, where torch.nn's composite ops would have saved their own."""
    ctx.recompute = not save
    return not save


def save_for_backward(ctx, tensors, read):
    """``ctx.save_for_backward(*tensors)``, where ``read[i]`` says whether a gradient autograd
    asked for reads ``tensors[i]`` as a tensor torch.nn would save (it saves only what its
    requested gradients read, and keeps the lengths of a packed batch as numbers: its
    composite cells do; its oneDNN LSTM in float32 and bfloat16 saves more and refuses more).

    An inference tensor (made under torch.inference_mode) cannot be saved. One that a
    requested gradient reads is refused first, with autograd's own words: autograd's refusal,
    raised inside a custom op's autograd, leaked the forward's outputs on torch 2.6 (256 KiB
    a call of a small bidirectional layer, kept for good). One that none reads, and that
    needs no gradient itself, is saved as a copy made outside inference mode: features made
    under inference mode feeding frozen weights still train the initial state, as torch.nn's
    do. Nothing is refused or copied where no input needs a gradient (autograd keeps nothing
    then): a frozen first layer reading such features trains the layers after it. Under
    torch.compile the tensors here are fake ones, never inference tensors, and AOT autograd
    saves the real input: there such a call meets autograd's own refusal."""
    needs_grad = getattr(ctx, "needs_input_grad", None)
    if needs_grad is not None and not any(needs_grad):
        ctx.save_for_backward(*tensors)
        return
    kept = []
    assert len(tensors) == len(read)
    for tensor, is_read in zip(tensors, read):
        if tensor is not None and tensor.is_inference():
            if is_read or tensor.requires_grad:
                raise RuntimeError(
                    "Inference tensors cannot be saved for backward: a weight, state or input "
                    "of this fusedrnn layer was made under torch.inference_mode; clone it "
                    "outside inference mode to train with it")
            tensor = tensor.clone()
        kept.append(tensor)
    ctx.save_for_backward(*kept)


def reads(ctx, index):
    """Whether a gradient autograd asked for reads the op's input at ``index`` as torch.nn's
    layers save it: only ``w_ih``'s gradient reads ``x`` (``index`` of each direction's
    ``w_ih``), only ``x``'s reads ``w_ih`` (0), and only ``w_hh``'s reads ``h0`` (its product's
    other operand; the GRU saves ``h0 - n``). Without ``needs_input_grad``, every one."""
    needs_grad = getattr(ctx, "needs_input_grad", None)
    return needs_grad is None or any(needs_grad[i] for i in index)


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend = inputs
    y, _, _, ws_a, ws_b = output
    if recomputes(ctx, save):  # every input read again; outputs and workspaces made again
        save_for_backward(ctx, (x, w_ih, w_hh, w_hr, h0, c0, lengths, None, None, None),
                          (False,) * 10)
    else:
        save_for_backward(ctx, (x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b),
                          (reads(ctx, (1,)), reads(ctx, (0,)), True, True, reads(ctx, (2,)),
                           True, False, True, True, True))
    ctx.biases = keep_biases(b_ih, b_hh)
    ctx.reverse, ctx.backend, ctx.has_bias = reverse, backend, b_ih is not None
    ctx.mark_non_differentiable(ws_a, ws_b)
    # Gradients of unused outputs arrive as None instead of zero-filled tensors the size of
    # the workspaces; the backward makes the zeros it needs.
    ctx.set_materialize_grads(False)


def keep_biases(*biases):
    """The biases as a forward keeps them for its backward: aside from the saved tensors, with
    their versions. The fused backward never reads them (a bias's gradient is its gates'), so
    a change in place between the forward and the backward (an optimizer step on the biases
    alone) must not fail it, as it does not fail torch.nn's composite cells; only a
    backward that recomputes the forward reads them (:func:`kept_biases`). An
    inference tensor has no version to keep (reading it raises; nothing outside inference
    mode can change one in place): kept without, as torch.nn's cells use such a bias, and a
    layer whose weights are all inference tensors meets autograd's own refusal to save
    them."""
    return tuple((b, None if b is None or b.is_inference() else b._version) for b in biases)


def kept_biases(kept, differentiated=True):
    """The biases :func:`keep_biases` kept, for a backward that recomputes the forward
    (``differentiated``: to differentiate it, for ``create_graph=True``; or to make the
    workspaces of a forward run without ``save`` again): refused, as autograd refuses a saved
    tensor, where one changed in place since the forward, or, ``differentiated``, is an
    inference tensor that requires a gradient (the recomputed forward cannot differentiate
    through one)."""
    for index, (bias, version) in enumerate(kept):
        name = "b_ih" if index % 2 == 0 else "b_hh"
        if differentiated and version is None and bias is not None and bias.requires_grad:
            raise RuntimeError(
                f"the {name} bias of a fusedrnn layer is an inference tensor (made under "
                "torch.inference_mode): create_graph=True recomputes the layer's forward from "
                "its biases and cannot differentiate through one; make a clone of it outside "
                "inference mode")
        if version is not None and bias._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: the {name} bias of a fusedrnn layer is at version "
                f"{bias._version}; expected version {version} instead (the backward "
                "recomputes the layer's forward from its biases)")
    return [bias for bias, _ in kept]


def register_autograd(cell, forward_op, backward_op):
    """Make ``backward_op`` (the hand-written BPTT) the autograd formula of ``forward_op``;
    where the gradients must be differentiable themselves (``create_graph=True``), the
    forward is recomputed from differentiable ops and differentiated instead
    (``backends/reference/differentiable.py``)."""

    def autograd_backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_ws_a, _grad_ws_b):
        x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b = ctx.saved_tensors
        if torch.is_grad_enabled():
            b_ih, b_hh = kept_biases(ctx.biases)
            x, = common.without_padding(lengths, x)  # as the backward op does
            return (*differentiable.gradients(cell, (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0),
                                              lengths, ctx.reverse,
                                              (grad_y, grad_h_n, grad_c_n)),
                    None, None, None, None)
        if ctx.recompute:
            biases = kept_biases(ctx.biases, differentiated=False)
            y, _, _, ws_a, ws_b = call(forward_op, x, w_ih, w_hh, *biases,
                                       w_hr, h0, c0, lengths, ctx.reverse, True, ctx.backend)
        grad_y, grad_h_n, grad_c_n = output_grads(grad_y, grad_h_n, grad_c_n, y, h0, c0)
        g_x, *grads = call(backward_op, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0,
                           lengths, y, ws_a, ws_b, ctx.reverse, ctx.has_bias, ctx.backend)
        return (g_x, *parameter_grads(grads, ctx.has_bias, w_hr, c0), None, None, None, None)

    register_autograd_formula(forward_op, autograd_backward, _setup_context)


def output_grads(grad_y, grad_h_n, grad_c_n, y, h0, c0):
    """The gradients of one direction's ``y, h_n, c_n`` for its backward op: zeros where
    autograd passed None (the output was unused), None for the GRU's and RNN's ``c_n``."""
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    if c0 is None:
        grad_c_n = None
    elif grad_c_n is None:
        grad_c_n = torch.zeros_like(c0)
    return grad_y, grad_h_n, grad_c_n


def parameter_grads(grads, has_bias, w_hr, c0):
    """A backward op's gradients of ``w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0`` as autograd
    takes them: None for the inputs that were None."""
    g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr, g_h0, g_c0 = grads
    if not has_bias:
        g_b_ih = g_b_hh = None
    return (g_w_ih, g_w_hh, g_b_ih, g_b_hh, None if w_hr is None else g_w_hr, g_h0,
            None if c0 is None else g_c0)


def _dispatching_pair(cell):
    """The ops every backend runs behind: the ``backend`` argument picks the implementation."""

    def forward_impl(*args):
        return backends.get(args[-1]).forward(cell, *args[:-1])

    def backward_impl(*args):
        return backends.get(args[-1]).backward(cell, *args[:-1])

    return define_pair(cell, "", forward_impl, backward_impl)


FORWARD = {}
BACKWARD = {}
for _cell in GATES:
    FORWARD[_cell], BACKWARD[_cell] = _dispatching_pair(_cell)
_FORWARD_CELL = {op: cell for cell, op in FORWARD.items()}
