"""Reports of ``fusedrnn bench``: the printed table, ``results.json``, ``results.md`` and the
speedup plots (PNG, matplotlib's Agg backend; skipped with a note without matplotlib).

Every row is one (case, mode, provider) of the result dicts of
:func:`fusedrnn.bench.measure_case`.
"""

import json
import os
import statistics
from pathlib import Path

from . import backends
from .bench_timing import NOISY_FRACTION

COLUMNS = ("cell", "shape", "mode", "provider", "median ms", "IQR ms", "ratio", "us/step",
           "floor us", "TFLOP/s")
FIRST_NUMERIC = COLUMNS.index("median ms")
RATIO_NOTE = ("ratio = fusedrnn median / torch.nn median (lower is better; < 1 means fusedrnn "
              "is faster); us/step = median / time steps")
FLOOR_NOTE = ("floor us = the least a time step can take: its GEMM FLOPs at the device's "
              "measured matrix rate (a large torch.mm in the dtype, on the CPU in float32 also "
              "the cpu backend's product, the faster; on the CPU float32's rate where it is "
              "faster, and for float16); on CUDA at least layers x directions x time loops (2 in "
              "training) kernel launches at the measured per-launch time, for an "
              "implementation that launches kernels step by step (fusedrnn/bench_floors.py)")
FLOPS_NOTE = ("TFLOP/s = GEMM FLOPs / median: forward 2*T*B*G*(I+P) per layer and direction "
              "(+ 2*T*B*H*P with a projection; G = gates x H; packed input counts its real "
              "tokens), backward 2 x forward (see fusedrnn.bench.gemm_flops)")
MEMORY_NOTE = ("peak_memory_bytes (JSON) = bytes allocated by one call above what was allocated "
               "before it: torch.cuda.max_memory_allocated on CUDA, the profiler's allocation "
               "records on the CPU")
PERSISTENT_NOTE = ("persistent floor (CUDA) = per layer and direction, the larger of the step's "
                   "recurrent product over the measured matrix rate and the measured latency "
                   "of the cheaper barrier (grid, or a 16-block cluster on Hopper); weights = "
                   "W_hh bytes over the measured copy bandwidth, for comparison "
                   "(fusedrnn/bench_floors.py); us per step, summed over layers and directions")
NOISY_NOTE = (f"! = noisy: IQR above {NOISY_FRACTION:.0%} of the median (a busy or throttled "
              "machine?); rerun before trusting that ratio")
PLOTS = {"batch": "speedup_vs_batch.png", "hidden_size": "speedup_vs_hidden.png"}


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 10 else f"{ms:.3f}"


def _us(microseconds):
    return f"{microseconds:.1f}" if microseconds >= 10 else f"{microseconds:.2f}"


def provider_title(entry, kernels=True):
    """A provider's name, with the backend ``auto`` resolved to, ``fusedrnn (auto: reference)``,
    and (``kernels``) the kernels the cuda or triton backend ran: ``fusedrnn (auto: cuda, grid)``."""
    detail = entry.get("kernels") if kernels else ""
    if entry["resolved_backend"] and entry["backend"] == backends.AUTO:
        resolved = entry["resolved_backend"] + (f", {detail}" if detail else "")
        return f"{entry['provider']} (auto: {resolved})"
    return entry["provider"] + (f" ({detail})" if detail else "")


def table_rows(results):
    """The table as lists of strings, one row per (case, mode, provider)."""
    rows = []
    for result in results:
        for entry in result["providers"]:
            if entry["status"] == "ok" and "median_s" in entry:
                timing = [_ms(entry["median_s"]),
                          _ms(entry["iqr_s"]) + (" !" if entry.get("noisy") else "  "),
                          f"{entry['ratio']:.2f}" if "ratio" in entry else "",
                          _us(entry["us_per_step"]), _us(result["floor_us_per_step"]),
                          f"{entry['tflops']:.3g}"]
            else:
                timing = [f"{entry['status']}: {entry['message']}"] + [""] * 5
            shape = result["case"].split(" ", 1)[1]
            rows.append([result["cell"], shape, result["mode"], provider_title(entry)] + timing)
    return rows


def notes(rows):
    """The explanatory lines under a table (the noise note only if a row is noisy)."""
    lines = [RATIO_NOTE, FLOOR_NOTE, FLOPS_NOTE]
    noisy_column = COLUMNS.index("IQR ms")
    if any(row[noisy_column].endswith("!") for row in rows):
        lines.append(NOISY_NOTE)
    return lines


def format_table(results, markdown=False):
    """The results as an aligned text table (or a markdown one), with the notes."""
    rows = table_rows(results)
    lines_after = notes(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < FIRST_NUMERIC else "---:"
                                for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(cell.strip().replace("|", "\\|") for cell in row) + " |"
                  for row in rows]
        return "\n".join(lines) + "\n\n" + "\n\n".join(lines_after) + "\n"
    widths = [max([len(c)] + [len(row[i]) for row in rows if row[i] and
                              not (i == FIRST_NUMERIC and ":" in row[i])])
              for i, c in enumerate(COLUMNS)]

    def line(cells):
        out = [cell.rjust(w) if i >= FIRST_NUMERIC and ":" not in cell else cell.ljust(w)
               for i, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()
    lines = [line(COLUMNS), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    return "\n".join(lines + lines_after) + "\n"


# ---------------------------------------------------------------- plots


def speedup_series(results, key):
    """``{(cell, mode, provider): [(x, speedup), ...]}`` sorted by ``x``, the case field
    ``key`` (``batch`` or ``hidden_size``), speedup = torch.nn median / provider median."""
    series = {}
    for result in results:
        for entry in result["providers"]:
            if entry.get("ratio"):
                name = (result["cell"], result["mode"], provider_title(entry, kernels=False))
                series.setdefault(name, []).append((result[key], 1.0 / entry["ratio"]))
    return {name: sorted(points) for name, points in series.items()}


def write_plots(results, out_dir):
    """Write the PNG speedup plots (against batch, against hidden size) into ``out_dir``.

    Returns ``(paths, note)``: ``note`` says why nothing was written (matplotlib missing,
    nothing to compare), else it is ``""``. Each series is one (cell, mode, provider): its
    markers are the cases, its line joins the median speedup at each x.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return [], "matplotlib is not installed: no PNG plots written (pip install matplotlib)"
    paths = []
    for key, filename in PLOTS.items():
        series = speedup_series(results, key)
        if not series:
            return paths, "no provider compared with torch.nn: no PNG plots written"
        figure = Figure(figsize=(10, 5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for (cell, mode, provider), points in series.items():
            xs = sorted({x for x, _ in points})
            medians = [statistics.median(s for x2, s in points if x2 == x) for x in xs]
            line, = axes.plot(xs, medians, label=f"{cell} {mode}, {provider}")
            axes.plot(*zip(*points), marker="o", linestyle="none", color=line.get_color())
        axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel(key.replace("_", " "))
        axes.set_ylabel("speedup over torch.nn (higher is better)")
        axes.set_title(f"speedup against {key.replace('_', ' ')}")
        figure.legend(fontsize="small", loc="outside right upper")
        path = Path(out_dir) / filename
        figure.savefig(path, dpi=100)
        paths.append(path)
    return paths, ""


# ---------------------------------------------------------------- files


def persistent_floor_lines(results):
    """A markdown section of the persistent floor terms (CUDA results only), else ``[]``."""
    rows = [r for r in results if r.get("persistent_floor_us")]
    if not rows:
        return []
    lines = ["## Per-step floor of a persistent kernel", "", PERSISTENT_NOTE, "",
             "| cell | shape | mode | flops us | barrier us | floor us | weights us |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for result in rows:
        terms = result["persistent_floor_us"]
        cells = [_us(terms[key]) if key in terms else "n/a"
                 for key in ("flops", "barrier", "floor", "weights")]
        lines.append(f"| {result['cell']} | {result['case']} | {result['mode']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


REPORT_FILES = ("results.json", "results.md")


def check_out_dir(out_dir):
    """Raise ValueError, before a run, where a report file of :func:`write_reports` could not
    be written into ``out_dir`` (a folder in its place)."""
    for name in (*REPORT_FILES, *PLOTS.values()):
        if (Path(out_dir) / name).is_dir():
            raise ValueError(f"{Path(out_dir) / name} is a folder, where the report writes a "
                             "file")


def write_reports(results, env, out_dir, settings=None, plots=True):
    """Write ``results.json``, ``results.md`` and (``plots``) the plots into ``out_dir``; each
    report file is replaced whole (written beside it, then renamed), so that a run killed
    while saving leaves the previous one.

    Returns ``(paths, note)``, ``note`` as for :func:`write_plots`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = (out_dir / name for name in REPORT_FILES)
    for stale in PLOTS.values():  # an earlier run's plots, which this run may not replace
        (out_dir / stale).unlink(missing_ok=True)
    plot_paths, note = write_plots(results, out_dir) if plots else ([], None)
    payload = {"environment": env, "settings": settings or {},
               "notes": [RATIO_NOTE, FLOOR_NOTE, FLOPS_NOTE, MEMORY_NOTE], "results": results}
    _replace(json_path, json.dumps(payload, indent=2) + "\n")
    lines = ["# fusedrnn benchmark", "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    if settings:
        lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Results", "", format_table(results, markdown=True)]
    lines += persistent_floor_lines(results)
    if plot_paths:
        lines += ["## Speedup plots", ""]
        lines += [f"![{path.stem}]({path.name})\n" for path in plot_paths]
    elif note:
        lines += [f"({note})", ""]
    _replace(md_path, "\n".join(lines))
    return [json_path, md_path, *plot_paths], note


def _replace(path, text):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
