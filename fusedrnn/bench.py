"""Benchmark fusedrnn against ``torch.nn``: the grids, the providers, the FLOP and floor
models, measuring a case.

Used by ``fusedrnn bench`` and by the pytest-benchmark suites in ``benchmarks/``. Every
(case, mode) builds a fusedrnn module, its ``torch.nn`` twin with the same weights
(:func:`fusedrnn.testing.torch_twin`) and one input (a padded tensor, or a
``PackedSequence`` of random lengths given to both); after warm-up calls the providers are
timed interleaved (their order rotates every repetition, so drift affects all of them), and
only the measured call sits inside the timed region (see :mod:`fusedrnn.bench_timing`).
Reports live in :mod:`fusedrnn.bench_report`. Nothing here queries a device at import time.
"""

import copy
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn.utils.rnn import PackedSequence

from . import backends, bench_graphs, bench_report, modules, testing
from .bench_checks import check_against_torch
from .bench_floors import GATES, MODE_FLOP_FACTORS, persistent_floor_terms, step_floor_seconds
from .bench_kernels import cuda_kernels, split_backend, triton_kernels, with_env
from .backends.triton import plan as triton_plan
from .bench_timing import is_noisy, peak_memory_bytes, summarize, time_interleaved

# the modes; MODE_FLOP_FACTORS: how many forwards' worth of GEMM FLOPs each does (gemm_flops)
MODES = tuple(MODE_FLOP_FACTORS)
DEFAULT_MODES = ("inference", "training")
CELLS = {"lstm": modules.LSTM, "gru": modules.GRU, "rnn": modules.RNN}
# The ops' name of each cell (the benchmarked RNN is nn.RNN's default, tanh).
OP_CELLS = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TORCH_LABEL = "torch.nn"
GRID_SIZES = ("quick", "default", "anchors", "full")


@dataclass(frozen=True)
class Case:
    """One benchmark shape: a cell, the sizes of its module and input (time-major), and
    whether the input is a ``PackedSequence`` of random lengths instead of a padded tensor."""

    cell: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    packed: bool = False

    @property
    def shape(self):
        extra = "".join(text for text, on in (
            (f" L{self.num_layers}", self.num_layers != 1), (" bi", self.bidirectional),
            (f" P{self.proj_size}", self.proj_size), (" packed", self.packed)) if on)
        return f"B{self.batch} T{self.steps} I{self.input_size} H{self.hidden_size}{extra}"

    @property
    def label(self):
        return f"{self.cell} {self.shape}"


# (batch, steps, input, hidden, extra Case arguments)
CPU_SHAPES = [(32, 100, 128, 256, {}), (8, 200, 64, 128, {}), (64, 50, 256, 512, {}),
              (16, 64, 100, 128, {"num_layers": 2, "bidirectional": True}), (1, 300, 32, 64, {})]
ANCHOR_SHAPES = [(16, 1024, 768, 768, {}), (64, 100, 512, 512, {})]
GPU_SHAPES = ([(b, 256, h, h, {}) for b in (16, 64) for h in (256, 768)]
              + [(16, 128, 256, 256, {"bidirectional": True})] + ANCHOR_SHAPES)
QUICK_SHAPES = [(4, 12, 8, 16, {}), (2, 6, 8, 8, {"num_layers": 2, "bidirectional": True})]
FULL_SHAPES = [(b, t, h, h, {"num_layers": layers, "bidirectional": bi})
               for layers in (1, 2) for bi in (False, True) for b in (1, 8, 16, 64, 256)
               for h in (128, 256, 512, 768, 1024) for t in (128, 1024)] + ANCHOR_SHAPES


def grid(device, size="default", cells=("lstm",), packed=False):
    """The :class:`Case` list of grid ``size`` (quick, default, full) for ``device``.

    quick: tiny shapes (seconds). default: the CPU shapes, or on CUDA the GPU shapes (one
    bidirectional, whose directions share the GPU) with the anchors (B16 T1024 H768 and B64
    T100 H512). anchors: those two alone. full: batch {1, 8, 16, 64, 256} x hidden
    {128, 256, 512, 768, 1024} x time {128, 1024} x layers {1, 2} x {uni, bidirectional},
    input size = hidden, plus the anchors. ``packed`` adds packed-input copies of the first
    shape (quick, CPU default) or of the anchors (CUDA default, full).
    """
    if size not in GRID_SIZES:
        raise ValueError(f"unknown grid size {size!r}; expected one of {GRID_SIZES}")
    cuda = torch.device(device).type == "cuda"
    shapes = {"quick": QUICK_SHAPES, "default": GPU_SHAPES if cuda else CPU_SHAPES,
              "anchors": ANCHOR_SHAPES, "full": FULL_SHAPES}[size]
    packed_shapes = (ANCHOR_SHAPES if size in ("full", "anchors") or (cuda and size == "default")
                     else shapes[:1])
    variants = [(shape, False) for shape in shapes]
    variants += [(shape, True) for shape in packed_shapes] if packed else []
    return [Case(cell, b, t, i, h, packed=is_packed, **extra)
            for cell in cells for (b, t, i, h, extra), is_packed in variants]


def default_grid(device, quick=False, cells=("lstm",), proj_size=0, anchors=False):
    """The grid of ``fusedrnn bench``: :func:`grid` ``quick``, ``anchors`` or ``default``,
    padded input.

    ``proj_size`` > 0: the LSTM cases get that projection; those whose hidden size is not
    larger (torch requires proj_size < hidden_size) are left out.
    """
    cases = grid(device, "quick" if quick else "anchors" if anchors else "default", cells)
    if proj_size <= 0:
        return cases
    return [replace(case, proj_size=proj_size) if case.cell == "lstm" else case
            for case in cases if case.cell != "lstm" or case.hidden_size > proj_size]


# ---------------------------------------------------------------- FLOPs and floors


def gemm_flops(case, mode="inference", tokens=None):
    """GEMM floating-point operations of one call of ``case`` in ``mode`` (multiply-add = 2).

    Forward, summed over layers ``l`` and directions::

        2 * T * B * G * (I_l + P)  [+ 2 * T * B * H * P for an LSTM projection]

    with ``G = gates * H`` (LSTM 4, GRU 3, RNN 1 gates), ``P`` the recurrent state size
    (``proj_size`` if set, else ``H``), ``I_l`` the layer's input size (``I`` for the first
    layer, ``D * P`` above it, ``D`` the number of directions). ``T * B`` is replaced by
    ``tokens`` when given (the real tokens of a packed input). Pointwise work is not counted.
    The backward pass is counted as twice the forward (one product for the input-side
    gradients and one for the weight gradients per forward product): ``inference`` and
    ``training_forward`` count 1 x forward, ``backward`` 2 x, ``training`` (forward +
    backward) 3 x. Example: LSTM, B=2, T=3, I=4, H=5, one layer, inference:
    2 * 3 * 2 * 20 * (4 + 5) = 2160.
    """
    tokens = case.steps * case.batch if tokens is None else tokens
    hidden, state = case.hidden_size, case.proj_size or case.hidden_size
    directions = 2 if case.bidirectional else 1
    gate_rows = GATES[case.cell] * hidden
    forward = 0
    for layer in range(case.num_layers):
        layer_input = case.input_size if layer == 0 else directions * state
        forward += directions * 2 * tokens * (gate_rows * (layer_input + state)
                                              + hidden * case.proj_size)
    return forward * MODE_FLOP_FACTORS[mode]


def input_tokens(x):
    """Real tokens of an input: ``T * B`` of a padded tensor, the summed lengths of a packed one."""
    if isinstance(x, PackedSequence):
        return int(x.data.shape[0])
    return int(x.shape[0] * x.shape[1])


# ---------------------------------------------------------------- providers


@dataclass
class Provider:
    """One contender for a case: a module and its own input, or why it cannot run.

    ``backend`` is the requested fusedrnn backend (``""`` for torch.nn), ``resolved`` the
    one it runs on, ``status`` one of ok, error, unavailable (then ``message`` says why).
    ``input`` is a padded tensor or a ``PackedSequence``.
    """

    label: str
    backend: str = ""
    resolved: str = ""
    module: torch.nn.Module = None
    input: object = None
    status: str = "ok"
    message: str = ""
    env: dict = None  # environment variables set around its calls (a forced kernel)
    kernels: str = ""  # the cuda backend's kernels for this case (cuda_kernels)


def short_error(error, limit=80):
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def provider_label(backend_name):
    """``fusedrnn`` for the ``auto`` backend, else ``fusedrnn [name]``."""
    return "fusedrnn" if backend_name == backends.AUTO else f"fusedrnn [{backend_name}]"


def make_input(case, device="cpu", dtype=torch.float32, seed=0):
    """The random input of ``case``: a padded ``(T, B, I)`` tensor, or a ``PackedSequence``
    with random lengths (unsorted, one of full length) when ``case.packed``."""
    generator = torch.Generator().manual_seed(seed + 1)
    if case.packed:
        return testing.make_packed(case.batch, case.steps, case.input_size, dtype=dtype,
                                   device=device, generator=generator)
    return testing.make_sequence(case.batch, case.steps, case.input_size, dtype=dtype,
                                 device=device, generator=generator)


def _copy_input(x):
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.clone())
    return x.clone()


def build_providers(case, backend_names=(backends.AUTO,), device="cpu", dtype=torch.float32,
                    seed=0, torch_nn=True, mode=None):
    """``[torch.nn provider] + one fusedrnn provider per backend`` for ``case``, same weights
    (``mode``, when given, for the backend ``auto`` picks: it may differ with training).

    The fusedrnn module is built first from ``seed`` and its torch.nn twin copies its
    weights; each provider gets its own copy of one random input (:func:`make_input`). A
    backend that cannot run on ``device``/``dtype`` gives an ``unavailable`` provider, a
    failure to build an ``error`` one. ``torch_nn=False`` leaves the torch.nn one out.
    """
    device = torch.device(device)
    proj = {"proj_size": case.proj_size} if case.proj_size else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = CELLS[case.cell](case.input_size, case.hidden_size, num_layers=case.num_layers,
                                bidirectional=case.bidirectional, **proj).to(device, dtype)
    x = make_input(case, device, dtype, seed)
    providers = []
    if torch_nn:
        try:
            twin = testing.torch_twin(base)
            if hasattr(twin, "flatten_parameters"):
                twin.flatten_parameters()
            providers.append(Provider(TORCH_LABEL, module=twin, input=_copy_input(x)))
        except Exception as error:  # noqa: BLE001 - reported in the table
            providers.append(Provider(TORCH_LABEL, status="error", message=short_error(error)))
    for name in backend_names:
        backend, env = split_backend(name)
        provider = Provider(provider_label(name), backend=name, env=env)
        why_not = backend_unavailable_reason(backend, device, dtype)
        if why_not:
            provider.status, provider.message = "unavailable", why_not
            providers.append(provider)
            continue
        call = backends.Call(OP_CELLS[case.cell], case.hidden_size,
                             case.proj_size or case.hidden_size, case.batch,
                             None if mode is None else mode != "inference", steps=case.steps)
        try:  # the backend may refuse this call (its sizes, a projection)
            provider.resolved = backends.select(backend, device, dtype, call).name
        except backends.BackendUnavailableError as error:
            provider.status, provider.message = "unavailable", str(error)
            providers.append(provider)
            continue
        if provider.resolved == "cuda":
            provider.kernels = cuda_kernels(case, device, dtype, env)
        elif provider.resolved == "triton":
            provider.kernels = triton_kernels(OP_CELLS[case.cell], case, device, dtype, env)
        module = copy.deepcopy(base)
        module.backend = backend
        provider.module, provider.input = module, _copy_input(x)
        providers.append(provider)
    return providers


def backend_unavailable_reason(name, device, dtype):
    """Why backend ``name`` (or ``"auto"``) cannot run on ``device`` in ``dtype``, else ``""``."""
    if name == backends.AUTO:
        try:
            backends.select(name, torch.device(device), dtype)
        except backends.BackendUnavailableError as error:
            return str(error)
        return ""
    backend = backends.get(name)  # asked directly: its own words, without select()'s preamble
    status = backend.available()
    if not status:
        return status.reason
    if name == "triton" and triton_plan.interpreted():
        return "Triton runs in its interpreter here (TRITON_INTERPRET=1): timings would mean nothing"
    return backend.supports(torch.device(device), dtype)[1]


def _loss(output):
    """The sum of every output tensor (padded or packed output and final states)."""
    return sum(tensor.sum() for tensor in testing.flatten_outputs(output))


def make_call(provider, mode):
    """``(call, setup)`` for one provider: ``call`` is what is timed, ``setup`` runs before it.

    inference: ``module(x)`` under ``torch.no_grad`` in eval mode. The other modes run in
    train mode with gradients for the input and every parameter, the loss being the sum of
    the output and the final states; ``setup`` clears gradients and earlier results outside
    the timing. training_forward: the forward only (its graph is released by the next
    ``setup``). backward: ``loss.backward()``, the forward running in ``setup``. training:
    forward and backward.
    """
    module, x = provider.module, provider.input
    data = x.data if isinstance(x, PackedSequence) else x
    if mode == "inference":
        module.eval()
        data.requires_grad_(False)

        def infer():
            with torch.no_grad():
                module(x)
        return infer, None
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    module.train()
    data.requires_grad_(True)
    kept = {}

    def clear():
        kept.clear()
        module.zero_grad(set_to_none=True)
        data.grad = None

    def forward():
        kept["output"] = module(x)

    def setup_backward():
        clear()
        kept["loss"] = _loss(module(x))

    def backward():
        kept["loss"].backward()

    def train():
        _loss(module(x)).backward()
    return {"training_forward": (forward, clear), "backward": (backward, setup_backward),
            "training": (train, clear)}[mode]


# ---------------------------------------------------------------- measuring


def measure_case(case, mode, backend_names=(backends.AUTO,), device="cpu", dtype=torch.float32,
                 warmup=3, repeats=10, seed=0, cuda_graph=False):
    """Build the providers of ``case`` and time them in ``mode``: one result dict, with the
    case's GEMM FLOPs and per-step floor, and per provider the timings, ratio to torch.nn,
    TFLOP/s and peak memory. ``cuda_graph``: each provider's call captured once and its
    replays timed (:mod:`fusedrnn.bench_graphs`); a provider that fails to capture is an
    error."""
    device = torch.device(device)
    providers = build_providers(case, backend_names, device, dtype, seed, mode=mode)
    check_against_torch(providers, dtype)
    calls = {i: with_env(make_call(p, mode), p.env) for i, p in enumerate(providers)
             if p.status == "ok"}
    graphs = _capture_all(calls, device, mode) if cuda_graph else {}
    calls = {i: call for i, call in calls.items() if not isinstance(graphs.get(i), Exception)}
    times = time_interleaved({i: (graphs[i].replay, None) if graphs else call
                              for i, call in calls.items()}, device, warmup, repeats)
    times.update({i: error for i, error in graphs.items() if isinstance(error, Exception)})
    inputs = [p.input for p in providers if p.status == "ok"]
    flops = gemm_flops(case, mode, input_tokens(inputs[0]) if inputs else None)
    entries = []
    for index, provider in enumerate(providers):
        entry = {"provider": provider.label, "backend": provider.backend,
                 "resolved_backend": provider.resolved, "kernels": provider.kernels,
                 "status": provider.status,
                 "message": provider.message}
        measured = times.get(index)
        if isinstance(measured, Exception):
            entry.update(status="error", message=short_error(measured))
        elif measured:
            entry.update(summarize(measured))
            entry["us_per_step"] = entry["median_s"] / case.steps * 1e6
            entry["tflops"] = flops / entry["median_s"] / 1e12
            entry["noisy"] = is_noisy(entry)
            entry["peak_memory_bytes"] = (graphs[index].peak_memory_bytes if graphs
                                          else peak_memory_bytes(*calls[index], device))
        entries.append(entry)
    reference = entries[0].get("median_s")
    for entry in entries[1:]:
        if reference and "median_s" in entry:
            entry["ratio"] = entry["median_s"] / reference
    return {"case": case.label, **asdict(case), "mode": mode, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "warmup": warmup, "repeats": repeats,
            "cuda_graph": cuda_graph,
            "flops": flops, "floor_us_per_step": step_floor_seconds(case, mode, flops, device, dtype) * 1e6,
            "persistent_floor_us": persistent_floor_terms(case, mode, device, dtype),
            "providers": entries}


def _capture_all(calls, device, mode):
    """``{index: Graphed or the exception its capture raised}`` for ``{index: (call, setup)}``."""
    bench_graphs.check_graphable(device, [mode])
    graphs = {}
    for index, (call, setup) in calls.items():
        try:
            graphs[index] = bench_graphs.capture(call, setup, device)
        except Exception as error:  # noqa: BLE001 - reported in the table
            graphs[index] = error
    return graphs


def run_grid(cases, modes=DEFAULT_MODES, backend_names=(backends.AUTO,), device="cpu",
             dtype=torch.float32, warmup=3, repeats=10, seed=0, progress=None, cuda_graph=False,
             results=None, measured=None):
    """:func:`measure_case` over ``cases`` x ``modes``; ``progress`` is a stream for
    ``[i/n] case mode`` lines, each followed by that case's table rows as soon as it is
    measured, so that a run cut short still leaves what it measured (``None``: silent);
    ``cuda_graph`` as in :func:`measure_case`. Returns the list of result dicts: ``results``,
    when given, filled as each is measured (what a caller keeps of an interrupted run);
    ``measured(results)``, when given, is called after each (to save them as they come)."""
    results = [] if results is None else results
    total = len(cases) * len(modes)
    if progress is not None:
        print("    " + " | ".join(bench_report.COLUMNS[3:]), file=progress)
    for case in cases:
        for mode in modes:
            if progress is not None:
                print(f"[{len(results) + 1}/{total}] {case.label} {mode} ...", file=progress,
                      flush=True)
            results.append(measure_case(case, mode, backend_names, device, dtype, warmup,
                                        repeats, seed, cuda_graph))
            if progress is not None:
                for row in bench_report.table_rows(results[-1:]):
                    print("    " + " | ".join(cell.strip() for cell in row[3:]),
                          file=progress, flush=True)
            if measured is not None:
                measured(results)
    return results
