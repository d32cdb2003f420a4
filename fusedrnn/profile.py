"""``fusedrnn profile``: a ``torch.profiler`` report of one configuration, torch.nn against
fusedrnn.

For each provider (the ``torch.nn`` module and the fusedrnn module on the chosen backend,
built with the same weights and input by :func:`fusedrnn.bench.build_providers`), after
untimed warm-up calls and a short timing, one call is profiled and the report gives:

* the op breakdown (``key_averages``: calls, self and total CPU time, self device time);
* launches per time step: on CUDA the kernels, memcpys and memsets of the call, on the CPU
  the operators (``aten::`` and ``fusedrnn::``) not nested inside another operator (what a
  step-by-step implementation pays dispatch overhead for; a fused operator counts once,
  whatever it runs inside), each divided by the time steps;
* memory: the peak bytes allocated during the call above what was allocated when it began,
  from the profiler's allocation records (``profile_memory=True``) of the run's device; on
  CUDA also ``torch.cuda.max_memory_allocated`` of an unprofiled call;
* a Chrome trace per provider (open in ``chrome://tracing`` or Perfetto).

Files in ``--out``: ``profile.md`` (the summary), ``profile.json`` (the same numbers) and
``trace-<provider>.json``.
"""

import json
import re
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity

from . import backends, bench, bench_environment, bench_timing

HELP = "profile one configuration of fusedrnn and torch.nn with torch.profiler"
WARMUP, REPEATS = 2, 5
DEVICE_LAUNCH_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_NOTE = ("launches/step: CUDA kernels, memcpys and memsets (on CUDA) or operators "
               "(aten:: and fusedrnn::) not nested in another operator (on the CPU) of one "
               "call, divided by the time steps")
MEMORY_NOTE = ("peak memory: bytes allocated during the profiled call above what was allocated "
               "when it began, from the profiler's allocation records")


def add_arguments(parser):
    """The options of ``fusedrnn profile``."""
    from fusedrnn.cli_types import positive_int, seed

    parser.add_argument("--cell", default="lstm", choices=sorted(bench.CELLS))
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--steps", type=positive_int, default=100, help="time steps")
    parser.add_argument("--input-size", type=positive_int, default=256)
    parser.add_argument("--hidden-size", type=positive_int, default=256)
    parser.add_argument("--layers", type=positive_int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=sorted(bench.DTYPES))
    parser.add_argument("--device", help="device to run on (default: cuda if available, else cpu)")
    parser.add_argument("--mode", default="inference", choices=bench.MODES,
                        help="inference, or training (forward + backward); also "
                             "training_forward or backward (default: inference)")
    parser.add_argument("--backend", default=backends.AUTO,
                        help="fusedrnn backend to profile (default: auto)")
    parser.add_argument("--top", type=positive_int, default=15,
                        help="ops listed per provider (default: 15)")
    parser.add_argument("--seed", type=seed, default=0, help="seed for weights and inputs")
    parser.add_argument("--out", metavar="DIR", default="bench-out/profile",
                        help="folder for profile.md, profile.json and the traces "
                             "(default: bench-out/profile)")


def run(args):
    """Profile the configuration of ``args``; exit status 1 if a provider failed or the
    backend asked for cannot run."""
    from fusedrnn.cli import UsageError, output_folder, parse_device

    device = parse_device(args.device)
    if args.backend != backends.AUTO and args.backend not in backends.names():
        raise UsageError(f"unknown backend {args.backend!r}; known backends: "
                         f"{', '.join(backends.names())} or 'auto'")
    output_folder(args.out)
    case = bench.Case(args.cell, args.batch, args.steps, args.input_size, args.hidden_size,
                      args.layers, args.bidirectional)
    report = profile_case(case, args.mode, args.backend, device, bench.DTYPES[args.dtype],
                          args.out, top=args.top, seed=args.seed)
    print(summary_markdown(report))
    print(f"wrote {', '.join(report['files'])}")
    # An explicitly requested backend that cannot run here fails the run too.
    failed = [e for e in report["providers"] if e["status"] == "error"
              or (e["status"] != "ok" and args.backend != backends.AUTO)]
    for entry in failed:
        print(f"error: {entry['provider']}: {entry['message']}", file=sys.stderr)
    return 1 if failed else 0


def profile_case(case, mode, backend_name=backends.AUTO, device="cpu", dtype=torch.float32,
                 out_dir="bench-out/profile", top=15, seed=0):
    """Profile every provider of ``case`` in ``mode``; write the files; return the report."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    providers = bench.build_providers(case, [backend_name], device, dtype, seed)
    entries = [profile_provider(p, case, mode, device, out_dir, top) for p in providers]
    report = {"case": case.label, **asdict(case), "mode": mode, "device": str(device),
              "dtype": str(dtype).replace("torch.", ""), "notes": [LAUNCH_NOTE, MEMORY_NOTE],
              "environment": bench_environment.environment(device), "providers": entries}
    json_path, md_path = out_dir / "profile.json", out_dir / "profile.md"
    report["files"] = [str(md_path), str(json_path)] + [
        str(out_dir / e["trace"]) for e in entries if e.get("trace")]
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(full_markdown(report), encoding="utf-8")
    return report


def profile_provider(provider, case, mode, device, out_dir, top):
    """One provider's entry of the report; its trace is written into ``out_dir``."""
    entry = {"provider": provider.label, "backend": provider.backend,
             "resolved_backend": provider.resolved, "status": provider.status,
             "message": provider.message}
    if provider.status != "ok":
        return entry
    call, setup = bench.make_call(provider, mode)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    trace_name = f"trace-{re.sub(r'[^A-Za-z0-9.]+', '-', provider.label).strip('-')}.json"
    try:
        times = bench_timing.time_call(call, device, WARMUP, REPEATS, setup)
        call_peak = bench_timing.peak_memory_bytes(call, setup, device)
        bench_timing.prepare(setup, device)
        with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
            call()
            bench_timing.synchronize(device)
    except Exception as error:  # noqa: BLE001 - reported in the report and the exit status
        entry.update(status="error", message=bench.short_error(error))
        return entry
    profiler.export_chrome_trace(str(out_dir / trace_name))
    trace = json.loads((out_dir / trace_name).read_text(encoding="utf-8"))["traceEvents"]
    ops = top_level_ops(profiler.events())
    kernels = device_launches(trace)
    launches = kernels if device.type == "cuda" else ops
    entry.update(median_ms=statistics.median(times) * 1e3, ops=ops,
                 ops_per_step=ops / case.steps, device_launches=kernels,
                 launches_per_step=launches / case.steps,
                 peak_memory_bytes=bench_timing.peak_allocated(trace, device),
                 call_peak_bytes=call_peak, trace=trace_name,
                 top_ops=op_table(profiler, device, top))
    return entry


OPERATOR_PREFIXES = ("aten::", "fusedrnn::")


def top_level_ops(events):
    """How many operators (ATen's and fusedrnn's) ran that were not nested inside another:
    torch.nn's ``aten::lstm`` and fusedrnn's ``fusedrnn::lstm_fwd`` count once each, not
    the ops they run inside."""
    def nested(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith(OPERATOR_PREFIXES):
                return True
            parent = parent.cpu_parent
        return False
    return sum(1 for e in events if e.name.startswith(OPERATOR_PREFIXES) and not nested(e))


def device_launches(trace_events):
    """Kernels, memcpys and memsets in a Chrome trace's events (0 for a CPU-only trace)."""
    return sum(1 for e in trace_events if e.get("cat") in DEVICE_LAUNCH_CATEGORIES)


def op_table(profiler, device, top):
    """The ``top`` ops by self device time (CUDA) or self CPU time, as dicts (times in us)."""
    key = "self_device_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    averages = [a for a in profiler.key_averages() if not a.key.startswith("[")]
    averages.sort(key=lambda a: getattr(a, key), reverse=True)
    return [{"op": a.key, "calls": a.count, "self_cpu_us": a.self_cpu_time_total,
             "cpu_total_us": a.cpu_time_total, "self_device_us": a.self_device_time_total}
            for a in averages[:top]]


# ---------------------------------------------------------------- markdown


def _bytes(value):
    if value is None:
        return "n/a"
    return f"{value / 2**20:.2f} MiB" if abs(value) >= 2**20 else f"{value / 2**10:.1f} KiB"


def summary_markdown(report):
    """The title, the notes and one summary row per provider, as markdown."""
    title = (f"# fusedrnn profile: {report['case']}, {report['mode']}, {report['device']}, "
             f"{report['dtype']}")
    lines = [title, "", "| provider | median ms | launches/step | ops/step | peak memory "
             "| trace |", "|---|---:|---:|---:|---:|---|"]
    for e in report["providers"]:
        name = e["provider"] + (f" ({e['resolved_backend']})" if e["resolved_backend"] else "")
        if e["status"] != "ok":
            lines.append(f"| {name} | {e['status']}: {e['message']} | | | | |")
            continue
        lines.append(f"| {name} | {e['median_ms']:.3f} | {e['launches_per_step']:.2f} | "
                     f"{e['ops_per_step']:.2f} | {_bytes(e['peak_memory_bytes'])} | "
                     f"[{e['trace']}]({e['trace']}) |")
    return "\n".join(lines + [""] + [f"- {note}" for note in report["notes"]]) + "\n"


def full_markdown(report):
    """``profile.md``: the summary, the environment and each provider's op table."""
    env = report["environment"]
    lines = [summary_markdown(report), "## Environment", ""]
    lines += [f"- {key}: {env[key]}" for key in ("device_name", "torch", "cuda", "cudnn",
                                                  "fusedrnn", "git_commit", "torch_threads")]
    device_column = report["device"].startswith("cuda")
    peak_source = ("torch.cuda.max_memory_allocated" if device_column
                   else "the profiler's allocation records")
    for e in report["providers"]:
        if e["status"] != "ok":
            continue
        lines += ["", f"## {e['provider']}", "",
                  f"{e['ops']} operators, {e['device_launches']} device launches; "
                  f"peak allocated by a call: {_bytes(e['call_peak_bytes'])} ({peak_source})",
                  "",
                  "| op | calls | self CPU us | CPU total us |"
                  + (" self CUDA us |" if device_column else ""),
                  "|---|---:|---:|---:|" + ("---:|" if device_column else "")]
        for op in e["top_ops"]:
            lines.append(f"| `{op['op']}` | {op['calls']} | {op['self_cpu_us']:.1f} | "
                         f"{op['cpu_total_us']:.1f} |"
                         + (f" {op['self_device_us']:.1f} |" if device_column else ""))
    return "\n".join(lines) + "\n"
