"""The ``cpu`` backend: the CPU kernels of the recurrence ops, from the compiled extension
``fusedrnn._cpu`` (``csrc/cpu/``), for every cell: per step one BLAS product and one
vectorised pass over the rows, the time loop in C++, where the reference backend pays
Python's dispatch for every operation of every step.

bfloat16 and float16 calls run the float32 kernels: their inputs widened to float32, their
results (outputs, final states, the workspaces kept for the backward, the gradients)
rounded back to the call's dtype once. That is at least as accurate as computing in the
16-bit dtype, as the reference backend does. The exception: bfloat16 calls of every cell
(but the projected LSTM) have kernels of their own where torch has a bfloat16 product
(``csrc/cpu/{lstm,gru,rnn}_bf16_cpu.cpp``: per step the product in bfloat16 with float32
results, the cell in float32; their backward is the mirror, then the products over all steps
in bfloat16, the generic backward of recurrence.py).

- Where the products run on oneDNN's brgemm, the float32 ones too (non-Intel CPUs with
  AVX512-BF16: ``csrc/cpu/bf16_product.h``), from :data:`BF16_BRGEMM_FROM` multiply-adds per
  step at an even hidden size. On the 2-core AMD EPYC, best of 15 interleaved runs, kernel
  against widened: GRU inference 0.83x at B1 T300 H64, 0.80 at B8 T200 H128, 0.59 at B32
  T100 H256, 0.54 at B64 T50 H512; training 0.93, 0.75, 0.55, 0.52; the RNN 1.03 at B1 H64
  (training 1.14), then 0.78-0.56 (0.83-0.51); the LSTM 0.87 at B1 H64 (training 0.96), 0.63
  at B4 T100 H256 (0.65). Below, at B1-2 H32-64, widening won in training by 7-24%
  (inference 0.98-1.14): benchmarks/results/epyc-2core-bf16-kernels-ab.
- Where the float32 products run on MKL's (Intel CPUs) and the bfloat16 ones on brgemm with
  AMX tiles, from :data:`BF16_AMX_FROM`. On the 2-core Xeon with AMX, kernel against widened,
  best of 7 interleaved rounds: at 2^17 to 2^21 multiply-adds per step 0.30-0.78 inference,
  0.22-0.97 training (all three cells); at 2^12 to 98,304, 0.75-1.54 and 0.93-1.62
  (benchmarks/results/cpu-2core-bf16-amx-ab).
- Elsewhere, from :data:`BF16_KERNEL_FROM` multiply-adds per step, the bfloat16 products on
  brgemm (AVX512-BF16 without AMX) or on MKL's ``cblas_gemm_bf16bf16f32`` (odd hidden sizes,
  or no bfloat16 brgemm in oneDNN): below, widening is faster. brgemm's on the 2-core Xeon
  without AMX, modules against widened: the LSTM 1.42-1.61x the time at B8 T200 H128, the GRU
  1.38-1.63x at B8 T200 H128 and B16 T100 H256, the RNN 0.91-1.57x at B8-32 (training
  1.24-1.57x) (benchmarks/results/xeon-emr-2core-bf16-brgemm-ab). MKL's, measured for the
  LSTM on the 2-core AMX Xeon at 9eeedc3, ms per forward: 6.2 against 9.9 widened at batch 32
  / hidden 256 / 100 steps, 13.6 against 37.1 at 64 / 512 / 50 steps, 6.3 against 6.1 at 16
  / 256, but 3.1 against 2.5 at 8 / 128 / 200 steps (benchmarks/results/cpu-2core-bfloat16
  at e12bd00). The GRU's and RNN's kernels take the same rule."""

import functools
import os

import torch

from .. import _extension
from . import common, thread_split
from .recurrence import RecurrenceBackend


# Multiply-adds per step (batch x G x H) from which the bfloat16 kernels run (bf16_kernel_from):
BF16_KERNEL_FROM = 2**22  # where widened calls run on MKL's float32 product (Intel CPUs)
BF16_BRGEMM_FROM = 10_000  # where both products run on oneDNN's brgemm (other x86 CPUs)
BF16_AMX_FROM = 2**17  # where the bfloat16 one runs on brgemm with AMX, the float32 on MKL
# From this many multiply-adds per step (batch x G x H), auto leaves 16-bit calls to the
# reference backend, whose bfloat16 products run on oneDNN (AMX where present): at batch 64,
# hidden 512 it trained 1.5-1.8x faster than the widened kernels here and ran the GRU and
# RNN forward 1.6x faster, while up to batch 32, hidden 256 these were as fast or faster.
# The bfloat16 kernels stay ahead where they run: the LSTM's on the Xeon (inference 1.56
# against 2.49 x torch.nn's time at batch 64, hidden 512, benchmarks/results/cpu-2core-bfloat16
# at e12bd00; training 0.81 against 1.40); on the EPYC, best of 15 interleaved runs, ms, cpu
# against reference at B64 T50 H512: LSTM 29.4, 39.4 (training 86, 108), GRU 22.0, 26.3 (65,
# 89), RNN 7.5, 9.5 (21.8, 25.8); the GRU at B64 H1024 0.88x, the RNN at B128 H1024 0.90-0.95x.
NARROW_AUTO_UNTIL = 2**24


class CpuBackend(RecurrenceBackend):
    name = "cpu"
    priority = 5
    extension = _extension.CPU
    device_type = "cpu"
    auto_devices = ("cpu",)
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    projection = True

    def auto_declines(self, device, dtype, call=None):
        # A symbolic batch (torch.export with a dynamic batch) would put a guard on it: the
        # choice is then made for every batch, as if small.
        if (dtype not in (torch.bfloat16, torch.float16) or call is None
                or not common.concrete_size(call.batch)):
            return False, ""
        if call.batch * common.GATES[call.cell] * call.hidden * call.state < NARROW_AUTO_UNTIL:
            return False, ""
        # The bfloat16 kernels stay ahead of it: the LSTM's on either product, the GRU's and
        # RNN's on brgemm's (on MKL's, at odd hidden sizes or without a bfloat16 brgemm,
        # unmeasured against it).
        if (self._bf16_kernel(call.cell, dtype, call.batch, call.hidden, call.state)
                and (call.cell == "lstm" or bf16_on_brgemm(self.extension.load(), call.hidden))):
            return False, ""
        return True, (f"{str(dtype).replace('torch.', '')} at 2^24 or more multiply-adds per "
                      "step runs faster as the reference backend's 16-bit products")

    def forward(self, cell, *args):
        narrow = _narrow_dtype(args[0])
        if narrow is None:
            return self._forward(cell, *args)
        x, w_hh = args[0], args[2]  # w_hh (G, P): G = 4H for the LSTM
        if self._bf16_kernel(cell, narrow, x.shape[1], *_sizes(cell, w_hh)):
            return self._forward(cell, *args)
        return _rounded(self._forward(cell, *_widened(args)), narrow)

    def _forward(self, cell, *args):
        """One ``*_forward`` op: the input projection, the biases and the time loop in one
        call. Three calls from Python took 5-15% more of a cell's step at hidden 128-256
        (benchmarks/results/epyc-2core-forward-op-ab)."""
        return _forward_kernel(_kernels(self.extension.load()), cell, *args)

    def direct_forward(self, cell, dtype):
        """The extension's kernel itself for float32 and float64 (16-bit calls are widened or
        chosen per size: :meth:`forward`): the op's implementation, the backend's lookup and
        the dtype's check took 5-7 us of a 30-80 us inference call of a cell or a one-step
        module at batch 1 and 8, hidden 32 and 128, on the 2-core Xeon
        (benchmarks/results/xeon-emr-2core-direct-forward-ab)."""
        if dtype not in (torch.float32, torch.float64):
            return None
        # The extension's plain functions run their kernels below autograd.
        return functools.partial(_forward_kernel, self.extension.load(), cell)

    def _bf16_kernel(self, cell, dtype, batch, hidden, state):
        """Whether a call runs the cell's bfloat16 kernels (else it is widened)."""
        if not (state == hidden and dtype == torch.bfloat16):  # the projected LSTM has none
            return False
        start = bf16_kernel_from(self.extension.load(), hidden)
        return start is not None and batch * common.GATES[cell] * hidden * hidden >= start

    def backward(self, cell, *args):
        narrow = _narrow_dtype(args[0])
        if narrow is None:
            return self._backward(cell, *args)
        x, w_hh, w_hr = args[3], args[5], args[6]
        if w_hr is None and self._bf16_kernel(cell, narrow, x.shape[1], *_sizes(cell, w_hh)):
            # The recurrence op's bfloat16 kernel (the forward kernel's mirror), then the
            # products over all steps in bfloat16 on oneDNN, as the reference backend takes
            # them: the generic backward of recurrence.py.
            return super().backward(cell, *args)
        return _rounded(self._backward(cell, *_widened(args)), narrow)

    def forward_directions(self, cell, first, second):
        """The two directions at the same time, one thread each, where that pays
        (thread_split)."""
        x, w_ih, w_hh, _, _, w_hr = first[:6]
        return thread_split.run_both(lambda: self.forward(cell, *first),
                                     lambda: self.forward(cell, *second),
                                     _products(x, w_ih, w_hh, w_hr))

    def backward_directions(self, cell, first, second):
        x, w_ih, w_hh, w_hr = first[3:7]
        return thread_split.run_both(lambda: self.backward(cell, *first),
                                     lambda: self.backward(cell, *second),
                                     _products(x, w_ih, w_hh, w_hr))

    def _backward(self, cell, grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y,
                  ws_a, ws_b, reverse, has_bias):
        """One ``*_bptt`` op: the kernel runs the products over all steps (gradients of x,
        the weights and the biases) on other threads while its time loop runs."""
        ops = _kernels(self.extension.load())
        if cell == "lstm":
            return ops.lstm_bptt(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                                 y, ws_a, ws_b, reverse, has_bias)
        if cell == "gru":
            *grads, dh0 = ops.gru_bptt(grad_y, grad_hn, x, w_ih, w_hh, h0, lengths, y, ws_a,
                                       ws_b, reverse, has_bias)
            return (*grads, common.empty(x), dh0, common.empty(x))
        *grads, dh0 = ops.rnn_bptt(grad_y, grad_hn, x, w_ih, w_hh, h0, lengths, y, reverse,
                                   cell == "rnn_relu", has_bias)
        return (*grads, common.empty(x), dh0, common.empty(x))


def _forward_kernel(kernels, cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse,
                    save):
    """The forward op's call of the ``kernels`` (the extension or torch.ops.fusedrnn) of ``cell``."""
    if cell == "lstm":
        return kernels.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse,
                                    save)
    if cell == "gru":
        return kernels.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, save)
    return kernels.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse,
                               cell == "rnn_relu")


def _kernels(module):
    """Where the ``*_forward`` and ``*_bptt`` ops' CPU kernels are called from: the
    extension's plain functions of them (``csrc/cpu/python_calls.h``, 2-3 us less a call than
    torch.ops' boxed call), or, while the profiler records, the ops themselves, so that its
    trace shows them. Only the profiler switches this, as it switches the op layer's direct
    calls (``ops.dispatcher_passes_on``): other observers of ATen's op records (an execution
    trace) see neither op."""
    return torch.ops.fusedrnn if torch._C._autograd._profiler_enabled() else module


def describe_products():
    """Which library runs the cpu backend's products here, in words."""
    status = _extension.CPU.status()
    if not status[0]:
        return "n/a (fusedrnn._cpu not built)"
    try:
        return _describe_products(_extension.CPU.load())
    except RuntimeError as error:  # a FUSEDRNN_CPU_GEMM the kernels refuse
        return f"none: {error}"


def _describe_products(extension):
    mode = os.environ.get("FUSEDRNN_CPU_GEMM") or "auto"
    f32 = ("oneDNN's brgemm" if extension.f32_on_brgemm()
           else "ATen" if mode == "aten" else "MKL (ATen where torch exports no BLAS)")
    bf16 = ("none (widened to float32)" if not extension.has_bf16_gemm()
            else "MKL" if not extension.bf16_on_brgemm()
            else "oneDNN's brgemm" + (" on AMX" if extension.bf16_on_amx() else "")
            + (" (MKL at odd hidden sizes)" if extension.bf16_on_mkl() else ""))
    small = ("; float32 and float64 calls of at most 16 rows in all, or of one row per step "
             "at hidden 128 and above: row dots of the weights in place"
             if mode == "auto" else "")
    if extension.bf16_row_dots():
        small += " (bfloat16 ones too, on AVX512-BF16, one row per step from hidden 512)"
    return (f"float32 on {f32}; the bfloat16 kernels' on {bf16}{small} "
            f"(FUSEDRNN_CPU_GEMM={mode})")


def describe_cell_math():
    """How the cpu backend's float32 rows compute the cells' activations (and its row dots
    their sums) here, in words."""
    if not _extension.CPU.status()[0]:
        return "n/a (fusedrnn._cpu not built)"
    mode = os.environ.get("FUSEDRNN_CPU_MATH") or "auto"
    try:
        on_avx512 = _extension.CPU.load().avx512_rows()
    except RuntimeError as error:  # a FUSEDRNN_CPU_MATH the kernels refuse
        return f"none: {error}"
    where = ("the forward rows and the row dots on AVX-512 intrinsics" if on_avx512
             else "vectorised portable code (AVX-512, AVX2 or baseline clones)")
    return f"{where} (FUSEDRNN_CPU_MATH={mode})"


def bf16_on_brgemm(extension, hidden):
    """Whether the bfloat16 kernels' products at this hidden size run on brgemm."""
    return hidden % 2 == 0 and extension.bf16_on_brgemm()


def bf16_kernel_from(extension, hidden):
    """The multiply-adds per step from which the bfloat16 kernels run at this hidden size, or
    None where they have no product (see the module's docstring): BF16_BRGEMM_FROM where the
    products of both the kernel and a widened call run on brgemm, BF16_AMX_FROM where the
    kernel's run on brgemm with AMX, else BF16_KERNEL_FROM (MKL's bfloat16 product where an
    odd hidden size's forward product needs it)."""
    on_brgemm = bf16_on_brgemm(extension, hidden)
    if on_brgemm and extension.f32_on_brgemm():
        return BF16_BRGEMM_FROM
    if on_brgemm and extension.bf16_on_amx():
        return BF16_AMX_FROM
    return BF16_KERNEL_FROM if on_brgemm or extension.bf16_on_mkl() else None


def describe_16_bit():
    """How the cpu backend runs bfloat16 and float16 calls here, in words."""
    kernel = ("not here (widened: no bfloat16 product, neither oneDNN's brgemm nor MKL's "
              "cblas_gemm_bf16bf16f32, or FUSEDRNN_CPU_GEMM is unpacked or aten)")
    status = _extension.CPU.status()
    try:
        if status[0] and _extension.CPU.load().has_bf16_gemm():
            extension = _extension.CPU.load()
            even, odd = (bf16_kernel_from(extension, hidden) for hidden in (2, 1))
            odd = "widened" if odd is None else f"from {odd:,} multiply-adds per step (MKL)"
            kernel = f"from {even:,} multiply-adds per step"
            if extension.bf16_on_brgemm():
                brgemm = "oneDNN's brgemm, AMX" if extension.bf16_on_amx() else "oneDNN's brgemm"
                kernel = f"{kernel} at even hidden sizes ({brgemm}), at odd ones {odd}"
    except RuntimeError as error:  # a FUSEDRNN_CPU_GEMM the kernels refuse
        kernel = f"none: {error}"
    return (f"the float32 kernels on widened inputs; bfloat16 kernels (every cell but the "
            f"projected LSTM): {kernel}; auto leaves calls of {NARROW_AUTO_UNTIL:,}+ "
            "multiply-adds per step to the reference backend (but the LSTM's where its "
            "bfloat16 kernels run, and the GRU's and RNN's where theirs run on brgemm)")


def _sizes(cell, w_hh):
    """The hidden size and the state's size of a direction with this ``w_hh`` (G, P)."""
    return w_hh.shape[0] // common.GATES[cell], w_hh.shape[1]


def _narrow_dtype(tensor):
    """``tensor``'s dtype if it is a 16-bit float, else None."""
    return tensor.dtype if tensor.dtype in (torch.bfloat16, torch.float16) else None


def _widened(args):
    """``args`` with every 16-bit floating tensor as float32 (the rest unchanged)."""
    return [a.float() if isinstance(a, torch.Tensor) and _narrow_dtype(a) else a for a in args]


def _rounded(results, dtype):
    """``results`` (tensors) in ``dtype``."""
    return tuple(r.to(dtype) for r in results)


def _products(x, w_ih, w_hh, w_hr):
    """The multiply-adds of one direction's forward products over all steps."""
    per_row = w_ih.numel() + w_hh.numel() + (0 if w_hr is None else w_hr.numel())
    return x.shape[0] * x.shape[1] * per_row
