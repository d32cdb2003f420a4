"""Benchmark fusedrnn against ``torch.nn``: the grid, the providers, honest timing, reports.

Used by ``fusedrnn bench`` and meant to be reused by pytest-benchmark suites. Every
(case, mode) builds a fusedrnn module, its ``torch.nn`` twin with the same weights
(:func:`fusedrnn.testing.torch_twin`) and one input; after warm-up calls the providers are
timed interleaved (their order rotates every repetition, so drift affects all of them), and
only the measured call sits inside the timed region. Nothing here queries a device at
import time.
"""

import copy
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__, backends, modules, testing

MODES = ("inference", "training")
CELLS = {"lstm": modules.LSTM, "gru": modules.GRU, "rnn": modules.RNN}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TORCH_LABEL = "torch.nn"
RATIO_NOTE = ("ratio = fusedrnn median / torch.nn median (lower is better; < 1 means fusedrnn "
              "is faster); us/step = median / time steps")
NOISY_FRACTION = 0.2  # an IQR above this fraction of the median marks a measurement noisy
NOISY_NOTE = (f"! = noisy: IQR above {NOISY_FRACTION:.0%} of the median (a busy or throttled "
              "machine?); rerun before trusting that ratio")


@dataclass(frozen=True)
class Case:
    """One benchmark shape: a cell and the sizes of its module and input (time-major)."""

    cell: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False

    @property
    def shape(self):
        extra = (f" L{self.num_layers}" if self.num_layers != 1 else "") + (
            " bi" if self.bidirectional else "")
        return f"B{self.batch} T{self.steps} I{self.input_size} H{self.hidden_size}{extra}"

    @property
    def label(self):
        return f"{self.cell} {self.shape}"


# (batch, steps, input, hidden, extra constructor arguments)
CPU_SHAPES = [(32, 100, 128, 256, {}), (8, 200, 64, 128, {}), (64, 50, 256, 512, {}),
              (16, 64, 100, 128, {"num_layers": 2, "bidirectional": True}), (1, 300, 32, 64, {})]
GPU_SHAPES = ([(b, 256, h, h, {}) for b in (16, 64) for h in (256, 768)]
              + [(16, 1024, 768, 768, {})])
QUICK_SHAPES = [(4, 12, 8, 16, {}), (2, 6, 8, 8, {"num_layers": 2, "bidirectional": True})]


def default_grid(device, quick=False, cells=("lstm",)):
    """The embedded grid of :class:`Case` for ``device`` (GPU shapes on CUDA), tiny if ``quick``."""
    device = torch.device(device)
    shapes = QUICK_SHAPES if quick else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    return [Case(cell, b, t, i, h, **extra) for cell in cells for b, t, i, h, extra in shapes]


# ---------------------------------------------------------------- providers


@dataclass
class Provider:
    """One contender for a case: a module and its own input, or why it cannot run.

    ``backend`` is the requested fusedrnn backend (``""`` for torch.nn), ``resolved`` the
    one it runs on, ``status`` one of ok, error, unavailable (then ``message`` says why).
    """

    label: str
    backend: str = ""
    resolved: str = ""
    module: torch.nn.Module = None
    input: torch.Tensor = None
    status: str = "ok"
    message: str = ""


def short_error(error, limit=80):
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build_providers(case, backend_names=(backends.AUTO,), device="cpu", dtype=torch.float32,
                    seed=0):
    """``[torch.nn provider] + one fusedrnn provider per backend`` for ``case``, same weights.

    The fusedrnn module is built first from ``seed`` and its torch.nn twin copies its
    weights; each provider gets its own copy of one random input. A backend that cannot run
    on ``device``/``dtype`` gives an ``unavailable`` provider, a failure to build an
    ``error`` one.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = CELLS[case.cell](case.input_size, case.hidden_size, num_layers=case.num_layers,
                                bidirectional=case.bidirectional).to(device, dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    x = testing.make_sequence(case.batch, case.steps, case.input_size, dtype=torch.float32,
                              generator=generator).to(device, dtype)
    providers = []
    try:
        twin = testing.torch_twin(base)
        if hasattr(twin, "flatten_parameters"):
            twin.flatten_parameters()
        providers.append(Provider(TORCH_LABEL, module=twin, input=x.clone()))
    except Exception as error:  # noqa: BLE001 - reported in the table
        providers.append(Provider(TORCH_LABEL, status="error", message=short_error(error)))
    for name in backend_names:
        label = "fusedrnn" if name == backends.AUTO else f"fusedrnn [{name}]"
        provider = Provider(label, backend=name)
        why_not = backend_unavailable_reason(name, device, dtype)
        if why_not:
            provider.status, provider.message = "unavailable", why_not
            providers.append(provider)
            continue
        provider.resolved = backends.select(name, device, dtype).name
        module = copy.deepcopy(base)
        module.backend = name
        provider.module, provider.input = module, x.clone()
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
    return backend.supports(torch.device(device), dtype)[1] if status else status.reason


def make_call(provider, mode):
    """``(call, setup)`` for one provider: ``call`` is what is timed, ``setup`` runs before it.

    inference: ``module(x)`` under ``torch.no_grad`` in eval mode. training: forward, then
    backward of ``output.sum()`` plus the sums of the final states, giving gradients for
    the input and every parameter; ``setup`` clears those gradients outside the timing.
    """
    module, x = provider.module, provider.input
    if mode == "inference":
        module.eval()
        x.requires_grad_(False)

        def call():
            with torch.no_grad():
                module(x)
        return call, None
    if mode != "training":
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    module.train()
    x.requires_grad_(True)

    def setup():
        module.zero_grad(set_to_none=True)
        x.grad = None

    def call():
        output, state = module(x)
        loss = output.sum()
        for final in (state if isinstance(state, tuple) else (state,)):
            loss = loss + final.sum()
        loss.backward()
    return call, setup


# ---------------------------------------------------------------- timing


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call, setup, device):
    """Seconds of one ``call``: ``setup`` and the device's pending work stay outside."""
    if setup is not None:
        setup()
    _synchronize(device)
    start = time.perf_counter()
    call()
    _synchronize(device)
    return time.perf_counter() - start


def time_call(fn, device="cpu", warmup=3, repeats=10, setup=None):
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; ``setup`` (if
    given) runs before every call, outside the timed region. See :func:`time_interleaved`."""
    times = time_interleaved({"fn": (fn, setup)}, device, warmup, repeats)["fn"]
    if isinstance(times, Exception):
        raise times
    return times


def time_interleaved(calls, device="cpu", warmup=3, repeats=10):
    """Time several ``{name: (call, setup)}`` interleaved: ``{name: [seconds, ...]}``.

    Each repetition runs every call once, in an order rotated by one each repetition. On
    CUDA the device is synchronised before and after each timed call; garbage collection is
    paused while timing, as in ``timeit``. A call that raises is returned as
    ``{name: exception}`` and left out of the rest.
    """
    device = torch.device(device)
    names = list(calls)
    times = {name: [] for name in names}
    rounds = [names] * warmup + [names[r % len(names):] + names[:r % len(names)]
                                 for r in range(repeats)] if names else []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index, order in enumerate(rounds):
            for name in order:
                if isinstance(times[name], Exception):
                    continue
                try:
                    seconds = _timed(*calls[name], device)
                except Exception as error:  # noqa: BLE001 - reported to the caller
                    times[name] = error
                    continue
                if index >= warmup:
                    times[name].append(seconds)
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(times):
    """``{"times_s", "median_s", "iqr_s"}`` of a list of seconds (IQR: inclusive quartiles)."""
    median = statistics.median(times)
    q1, _, q3 = (statistics.quantiles(times, n=4, method="inclusive") if len(times) >= 2
                 else (median, median, median))
    return {"times_s": list(times), "median_s": median, "iqr_s": q3 - q1}


def is_noisy(summary):
    """Whether a :func:`summarize` result spreads too much to trust (needs 5+ repeats)."""
    return (len(summary["times_s"]) >= 5
            and summary["iqr_s"] > NOISY_FRACTION * summary["median_s"])


def measure_case(case, mode, backend_names=(backends.AUTO,), device="cpu", dtype=torch.float32,
                 warmup=3, repeats=10, seed=0):
    """Build the providers of ``case`` and time them in ``mode``: one result dict."""
    device = torch.device(device)
    providers = build_providers(case, backend_names, device, dtype, seed)
    calls = {i: make_call(p, mode) for i, p in enumerate(providers) if p.status == "ok"}
    times = time_interleaved(calls, device, warmup, repeats)
    entries = []
    for index, provider in enumerate(providers):
        entry = {"provider": provider.label, "backend": provider.backend,
                 "resolved_backend": provider.resolved, "status": provider.status,
                 "message": provider.message}
        measured = times.get(index)
        if isinstance(measured, Exception):
            entry.update(status="error", message=short_error(measured))
        elif measured:
            entry.update(summarize(measured))
            entry["us_per_step"] = entry["median_s"] / case.steps * 1e6
            entry["noisy"] = is_noisy(entry)
        entries.append(entry)
    reference = entries[0].get("median_s")
    for entry in entries[1:]:
        if reference and "median_s" in entry:
            entry["ratio"] = entry["median_s"] / reference
    return {"case": case.label, **asdict(case), "mode": mode, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "warmup": warmup, "repeats": repeats,
            "providers": entries}


def run_grid(cases, modes=MODES, backend_names=(backends.AUTO,), device="cpu",
             dtype=torch.float32, warmup=3, repeats=10, seed=0, progress=None):
    """:func:`measure_case` over ``cases`` x ``modes``; ``progress`` is a stream for
    ``[i/n] case mode`` lines (``None``: silent). Returns the list of result dicts."""
    results = []
    total = len(cases) * len(modes)
    for case in cases:
        for mode in modes:
            if progress is not None:
                print(f"[{len(results) + 1}/{total}] {case.label} {mode} ...", file=progress,
                      flush=True)
            results.append(measure_case(case, mode, backend_names, device, dtype, warmup,
                                        repeats, seed))
    return results


# ---------------------------------------------------------------- environment


def triton_version():
    """The installed Triton's version, or ``"not installed"``."""
    for name in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit():
    """``(commit, dirty)`` of the source checkout fusedrnn is imported from, or ``(None, None)``."""
    package = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / "fusedrnn").resolve() != package:
            return None, None  # fusedrnn sits inside some other repository (e.g. a venv)
        # dirty: the package's own files differ from the commit (untracked ones included)
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(device=None):
    """Versions, device and machine facts for reports and ``fusedrnn info``."""
    cuda_ok = torch.cuda.is_available()
    device = torch.device(device or ("cuda" if cuda_ok else "cpu"))
    commit, dirty = git_commit()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu_count = torch.cuda.device_count() if cuda_ok else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(gpu_count)]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": device_name, "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "gpus": gpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "triton": triton_version(), "fusedrnn": __version__,
        "git_commit": commit, "git_dirty": dirty, "argv": sys.argv[1:],
    }


# ---------------------------------------------------------------- reports

COLUMNS = ("cell", "shape", "mode", "provider", "median ms", "IQR ms", "ratio", "us/step")


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 10 else f"{ms:.3f}"


def table_rows(results):
    """The table as lists of strings, one row per (case, mode, provider)."""
    rows = []
    for result in results:
        for entry in result["providers"]:
            provider = entry["provider"]
            if entry["resolved_backend"] and entry["backend"] == backends.AUTO:
                provider += f" (auto: {entry['resolved_backend']})"
            if entry["status"] == "ok" and "median_s" in entry:
                timing = [_ms(entry["median_s"]), _ms(entry["iqr_s"]) + (" !" if entry.get(
                              "noisy") else "  "),
                          f"{entry['ratio']:.2f}" if "ratio" in entry else "",
                          f"{entry['us_per_step']:.1f}"]
            else:
                timing = [f"{entry['status']}: {entry['message']}", "", "", ""]
            shape = result["case"].split(" ", 1)[1]
            rows.append([result["cell"], shape, result["mode"], provider] + timing)
    return rows


def format_table(results, markdown=False):
    """The results as an aligned text table (or a markdown one), with the ratio note."""
    rows = table_rows(results)
    notes = RATIO_NOTE + ("\n" + NOISY_NOTE if any(row[5].endswith("!") for row in rows) else "")
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(cell.strip().replace("|", "\\|") for cell in row) + " |"
                  for row in rows]
        return "\n".join(lines) + "\n\n" + notes.replace("\n", "\n\n") + "\n"
    widths = [max([len(c)] + [len(row[i]) for row in rows if row[i] and
                              not (i == 4 and ":" in row[i])])
              for i, c in enumerate(COLUMNS)]

    def line(cells):
        out = [cell.rjust(w) if i >= 4 and ":" not in cell else cell.ljust(w)
               for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()
    lines = [line(COLUMNS), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    return "\n".join(lines) + f"\n{notes}\n"


def write_reports(results, env, out_dir, settings=None):
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    payload = {"environment": env, "settings": settings or {}, "results": results}
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = ["# fusedrnn benchmark", "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    if settings:
        lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Results", "", format_table(results, markdown=True)]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return json_path, md_path
