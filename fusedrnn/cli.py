"""The ``fusedrnn`` console script.

Subcommands live in :data:`COMMANDS`: each is a name, a help line, a function that adds its
arguments to its subparser, and a function ``run(args) -> exit status``. To add one (say
``profile``), write those two functions and append a :class:`Command` to the table. A run
function raises :class:`UsageError` for bad arguments; the message is printed with the
subcommand's usage and the script exits with status 2. Nothing here touches a device until
a command runs.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from fusedrnn import profile
from fusedrnn.cli_types import non_negative_int, positive_int, seed
from fusedrnn.apps import forecast, sentiment_cli, seq2seq

__all__ = ["main", "COMMANDS", "Command", "UsageError", "parse_device", "output_folder"]


class UsageError(Exception):
    """Bad command-line arguments that argparse itself cannot catch."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable
    run: Callable


# ---------------------------------------------------------------- info


def add_info_arguments(parser):
    """``fusedrnn info`` takes no arguments."""


def run_info(args):
    """Print versions, devices, backends and the compiled extension's status."""
    import torch

    import fusedrnn
    from fusedrnn import _extension, bench_environment
    from fusedrnn.backends import cpu as cpu_backend, thread_split

    env = bench_environment.environment()
    cuda = env["cuda"] or "none (CPU-only torch build)"
    if env["cuda"] and not torch.cuda.is_available():
        cuda += " (torch build; no CUDA device available)"
    rows = [("python", env["python"]), ("torch", env["torch"]), ("CUDA", cuda),
            ("cuDNN", env["cudnn"] if env["cudnn"] is not None else "n/a (no CUDA device)"),
            ("Triton", env["triton"]), ("fusedrnn", env["fusedrnn"])]
    if env["git_commit"]:
        rows.append(("git commit", env["git_commit"] + (" (dirty)" if env["git_dirty"] else "")))
    _print_section("versions", rows)
    devices = [("cpu", f"{env['cpu_model']}, {env['cpu_count']} cores "
                       f"({env['usable_cores']} usable), torch threads {env['torch_threads']}")]
    if env["cpu_id"]:
        devices.append(("cpu id", env["cpu_id"]))
    devices += [(f"cuda:{index}", name) for index, name in enumerate(env["gpus"])]
    if not env["gpus"]:
        devices.append(("cuda", "not available"))
    _print_section("devices", devices)
    backend_rows = [(name, "available" if status.available else f"unavailable: {status.reason}")
                    for name, status in fusedrnn.available_backends().items()]
    _print_section("backends (auto tries them in this order)", backend_rows)
    _print_section("cpu backend", [("products", cpu_backend.describe_products()),
                                   ("cell math", cpu_backend.describe_cell_math()),
                                   ("bidirectional layers", thread_split.describe()),
                                   ("bfloat16, float16", cpu_backend.describe_16_bit())])
    rows = []
    for extension in _extension.EXTENSIONS:
        available, reason = extension.status()
        rows.append((extension.module, "built" if available else f"not built: {reason}"))
    _print_section("extensions", rows)
    return 0


def _print_section(title, rows):
    print(f"{title}:")
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


# ---------------------------------------------------------------- bench


def add_bench_arguments(parser):
    parser.add_argument("--device", help="device to run on (default: cuda if available, else cpu)")
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="fusedrnn backend to time, repeatable (default: auto); "
                             "cuda:KERNEL or triton:KERNEL forces the backend's kernel choice")
    parser.add_argument("--cell", default="lstm",
                        help="comma-separated cells among lstm,gru,rnn (default: lstm)")
    parser.add_argument("--mode", default="inference,training",
                        help="comma-separated modes among inference,training_forward,backward,"
                             "training (forward + backward) (default: inference,training)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true",
                      help="tiny shapes and few repeats (a smoke test, e.g. for CI)")
    grid.add_argument("--anchors", action="store_true",
                      help="only the anchor shapes: B16 T1024 H768 (FlashRNN's) and B64 T100 "
                           "H512 (PyTorch's fastrnns)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed repetitions per provider (default: 20, --quick: 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help="untimed calls per provider first (default: 3, --quick: 1)")
    parser.add_argument("--proj-size", type=non_negative_int, default=0, metavar="P",
                        help="give the LSTM cases proj_size P (those with hidden size <= P "
                             "are left out)")
    parser.add_argument("--seed", type=seed, default=0, help="seed for weights and inputs")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture each provider's call in a CUDA graph and time its "
                             "replays (CUDA only; modes inference and training)")
    parser.add_argument("--out", metavar="DIR",
                        help="write results.json, results.md and PNG speedup plots here")


def run_bench(args):
    """Time fusedrnn against torch.nn over the default grid and print the table."""
    import torch

    from fusedrnn import backends, bench, bench_environment, bench_graphs, bench_report

    device = parse_device(args.device)
    cells = _choices(args.cell, bench.CELLS, "cell")
    modes = _choices(args.mode, bench.MODES, "mode")
    if args.cuda_graph:
        try:
            bench_graphs.check_graphable(device, modes)
        except ValueError as error:
            raise UsageError(f"--cuda-graph: {error}") from None
    backend_names = list(dict.fromkeys(args.backend or [backends.AUTO]))
    known = backends.names()
    for name in backend_names:
        try:
            base, _ = bench.split_backend(name)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if base != backends.AUTO and base not in known:
            raise UsageError(f"unknown backend {name!r}; known backends: "
                             f"{', '.join(known)} or 'auto'")
    dtype = bench.DTYPES[args.dtype]
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.proj_size and "lstm" not in cells:
        raise UsageError(f"--proj-size {args.proj_size}: only LSTM cases have a projection, "
                         f"and --cell {','.join(cells)} has none")
    cases = bench.default_grid(device, quick=args.quick, cells=cells, proj_size=args.proj_size,
                               anchors=args.anchors)
    if not cases:
        raise UsageError(f"--proj-size {args.proj_size} leaves no case of the "
                         f"{'quick ' if args.quick else ''}grid (an LSTM case needs a hidden "
                         "size above it)")
    if args.out is not None:
        try:
            bench_report.check_out_dir(output_folder(args.out))
        except ValueError as error:
            raise UsageError(f"--out: {error}") from None

    env = bench_environment.environment(device)
    if env["load_average"] and env["load_average"][0] > 0.5 * env["usable_cores"]:
        print(f"warning: load average {env['load_average'][0]:.2f} on {env['usable_cores']} "
              "cores: other work may disturb the timings", file=sys.stderr)
    print(f"fusedrnn {env['fusedrnn']} vs torch {env['torch']} on {device} "
          f"({env['device_name']}; {env['torch_threads']} torch threads), {args.dtype}, "
          f"warmup {warmup}, repeats {repeats}, interleaved, median"
          + (", CUDA graph replays" if args.cuda_graph else ""))
    sys.stdout.flush()
    settings = {"device": str(device), "dtype": args.dtype, "cells": cells, "modes": modes,
                "backends": backend_names, "quick": args.quick, "anchors": args.anchors,
                "warmup": warmup, "repeats": repeats, "seed": args.seed,
                "proj_size": args.proj_size, "cuda_graph": args.cuda_graph,
                "torch_threads": torch.get_num_threads()}
    total = len(cases) * len(modes)

    def save_so_far(results):  # a run killed (a time limit, a hung GPU) keeps these
        if args.out is not None and len(results) < total:
            bench_report.write_reports(results, env, args.out, {
                **settings, "partial": f"{len(results)} of {total} measurements"}, plots=False)

    results, interrupted = [], False
    try:
        bench.run_grid(cases, modes, backend_names, device, dtype, warmup, repeats, args.seed,
                       progress=sys.stderr, cuda_graph=args.cuda_graph, results=results,
                       measured=save_so_far)
    except KeyboardInterrupt:  # keep what was measured: the table and the reports of it
        interrupted = True
        print(f"interrupted after {len(results)} of {total} measurements", file=sys.stderr)
    print(bench_report.format_table(results), end="")
    if args.out is not None:
        if interrupted:
            settings["interrupted"] = f"after {len(results)} of {total} measurements"
        paths, note = bench_report.write_reports(results, env, args.out, settings)
        print(f"wrote {', '.join(str(path) for path in paths)}")
        if note:
            print(f"note: {note}")
    return 130 if interrupted else 0


def parse_device(requested):
    """The ``--device`` of a subcommand as a ``torch.device``: CUDA when available by default."""
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise UsageError(f"bad --device {requested!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested}: only cpu and cuda are supported")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UsageError(f"--device {requested}: there is one cpu device, cpu (or cpu:0)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def output_folder(path, flag="--out"):
    """``path`` created if need be and checked writable before any work, as a ``Path``."""
    from pathlib import Path

    if not str(path).strip():
        raise UsageError(f"{flag}: an empty path")
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {path}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: not writable")
    return folder


def _choices(text, allowed, what):
    chosen = [item.strip().lower() for item in text.split(",") if item.strip()]
    bad = [item for item in chosen if item not in allowed]
    if bad or not chosen:
        raise UsageError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                         f"choose among {','.join(allowed)}")
    return list(dict.fromkeys(chosen))


# ---------------------------------------------------------------- entry point

COMMANDS = [
    Command("info", "print versions, devices, backends and the extension's status",
            add_info_arguments, run_info),
    Command("bench", "time fusedrnn against torch.nn on this machine", add_bench_arguments,
            run_bench),
    Command("profile", profile.HELP, profile.add_arguments, profile.run),
    Command("sentiment", sentiment_cli.HELP, sentiment_cli.add_arguments, sentiment_cli.run),
    Command("forecast", forecast.HELP, forecast.add_arguments, forecast.run),
    Command("seq2seq", seq2seq.HELP, seq2seq.add_arguments, seq2seq.run),
]


def build_parser():
    """The top-level parser and ``{command name: subparser}``."""
    from fusedrnn import __version__

    parser = argparse.ArgumentParser(prog="fusedrnn", description="fused LSTM/GRU/RNN for "
                                     "PyTorch: environment report, benchmarks, profiles and "
                                     "the applications")
    parser.add_argument("--version", action="version", version=f"fusedrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for command in COMMANDS:
        subparser = sub.add_parser(command.name, help=command.help,
                                   description=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
        subparsers[command.name] = subparser
    return parser, subparsers


def main(argv=None):
    """Run the console script; returns the exit status (argument errors exit with 2)."""
    if argv is not None:
        argv = [os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg) for arg in argv]
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        subparsers[args.command].error(str(error))
    except BrokenPipeError:  # the output piped into a reader that stopped (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
