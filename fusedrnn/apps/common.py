"""Helpers shared by the applications: seeding, devices, progress bars, checkpoints, metrics,
markdown tables and learning-curve plots."""

import contextlib
import importlib.util
import os
import random
import sys
from pathlib import Path

import torch

__all__ = ["CheckpointError", "ConfigError", "usage_error", "usage_errors", "require",
           "backend_choices", "check_backend", "add_backend_argument", "add_device_arguments",
           "device_from_args", "seed_everything", "default_device", "prepare_cpu", "progress",
           "save_checkpoint", "load_checkpoint", "provenance", "provenance_markdown",
           "binary_metrics", "markdown_table", "saved_figure", "plot_curves"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not of the expected kind or version."""


class ConfigError(ValueError):
    """Options that cannot run together on the data (the message names them)."""


def usage_error(message):
    """A :class:`fusedrnn.cli.UsageError` (imported late: ``fusedrnn.cli`` imports the apps)."""
    from ..cli import UsageError

    return UsageError(message)


@contextlib.contextmanager
def usage_errors(*error_types):
    """Turn ``error_types`` raised inside into usage errors (the message and exit status 2):
    for bad data paths, checkpoints and other arguments."""
    try:
        yield
    except error_types as error:
        raise usage_error(str(error)) from error


def require(command, *packages):
    """A usage error, before any work, naming the optional ``packages`` that ``command``
    needs and are not installed (a missing plotting package found after a long training
    would lose its results)."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        names = " ".join(missing)
        raise usage_error(f"fusedrnn {command} needs {', '.join(missing)}, not installed: "
                          f"pip install {names} (or pip install 'fusedrnn[apps]' for every "
                          "application's packages)")


def backend_choices():
    """What ``--backend`` accepts: auto or a registered backend's name."""
    from .. import backends

    return [backends.AUTO, *backends.names()]


def check_backend(name, device, dtype=None):
    """A usage error, before any work, where ``--backend name`` (or under auto the
    ``FUSEDRNN_BACKEND`` variable) cannot run on ``device``."""
    from .. import backends

    try:
        backends.select(name, device, dtype or torch.get_default_dtype())
    except (backends.BackendUnavailableError, ValueError) as error:
        raise usage_error(f"--backend {name}: {error}") from None


def add_backend_argument(parser):
    """``--backend``, one of :func:`backend_choices`."""
    parser.add_argument("--backend", default="auto", choices=backend_choices(),
                        help="fusedrnn backend (default: auto)")


def add_device_arguments(parser):
    """``--device`` and ``--threads``, read back by :func:`device_from_args`."""
    from ..cli_types import non_negative_int

    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="CPU threads (default 0: torch's default; 1 is often faster on a "
                             "CPU busy with other work)")


def device_from_args(args):
    """The ``torch.device`` of ``--device`` (a usage error if it cannot be used here, as for
    ``fusedrnn bench``), with the CPU prepared by :func:`prepare_cpu` for ``--threads``."""
    from ..cli import parse_device

    device = parse_device(args.device)
    prepare_cpu(device, args.threads)
    return device


def seed_everything(seed):
    """Seed Python's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def default_device():
    """cuda if available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_cpu(device, threads=0):
    """On the CPU, flush denormal floats to zero and use ``threads`` threads (0: torch's
    default).

    Gradients that fade through hundreds of recurrent steps become denormal, and x86 CPUs
    compute on denormals up to 100x slower: a BiLSTM over 300 tokens trains ~10x slower
    without this. The numbers lost are below 1e-38. On a CPU shared with other work, one
    thread can be several times faster than two (OpenMP threads wait for each other).
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        if threads:
            torch.set_num_threads(threads)


class _NoBar:
    """What :func:`progress` returns where disabled: the iterable, with the bar's methods
    that the applications call doing nothing."""

    def __init__(self, iterable):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def progress(iterable, total, description, enabled=True):
    """A tqdm bar on stderr (refreshing at most every 30 s when stderr is not a terminal);
    where not ``enabled``, no bar, and tqdm need not be installed."""
    if not enabled:
        return _NoBar(iterable)
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=description, leave=interactive,
                mininterval=0.5 if interactive else 30.0, dynamic_ncols=True, file=sys.stderr)


def save_checkpoint(path, payload):
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_checkpoint(path, kind, version, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True`` and check its ``kind`` and ``version``.

    Raises :class:`CheckpointError` with the reason for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types (pickle, zip, runtime) for bad files
        first_line = next(iter(str(error).splitlines()), "") or "empty or truncated file"
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint "
                              f"({type(error).__name__}: {first_line})") from error
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} is not a {kind} checkpoint (found {found!r})")
    if payload.get("version") != version:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}; "
                              f"this fusedrnn reads version {version}")
    return payload


# What a results file says of where it came from (fusedrnn.bench_environment.environment's keys).
PROVENANCE = ("date", "device", "device_name", "torch_threads", "python", "torch", "cuda",
              "triton", "fusedrnn", "git_commit", "git_dirty", "argv")


def provenance(device):
    """The device, versions and commit a results file records, as a dict."""
    from ..bench_environment import environment

    env = environment(device)
    return {key: env[key] for key in PROVENANCE}


def provenance_markdown(device):
    """:func:`provenance` as a markdown section."""
    return "\n## Environment\n\n" + "".join(f"- {key}: {value}\n"
                                             for key, value in provenance(device).items())


def binary_metrics(labels, predictions):
    """Accuracy, precision, recall and F1 of the positive class (1), and the confusion
    matrix ``[[true neg, false pos], [false neg, true pos]]``, from two 0/1 sequences."""
    labels, predictions = torch.as_tensor(labels), torch.as_tensor(predictions)
    if labels.shape != predictions.shape or labels.numel() == 0:
        raise ValueError("labels and predictions must be non-empty and of the same length")
    tp = int(((predictions == 1) & (labels == 1)).sum())
    tn = int(((predictions == 0) & (labels == 0)).sum())
    fp = int(((predictions == 1) & (labels == 0)).sum())
    fn = int(((predictions == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / labels.numel(), "precision": precision, "recall": recall,
            "f1": f1, "confusion": [[tn, fp], [fn, tp]], "count": labels.numel()}


def markdown_table(headers, rows):
    """A GitHub markdown table; numbers are right-aligned."""
    def is_number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    align = ["---:" if rows and is_number(rows[0][i]) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def saved_figure(path, panels=1, size=(5, 3.8)):
    """Yield ``(figure, axes list)`` of a row of ``panels`` matplotlib subplots (Agg backend,
    no display needed); on exit, save them as a PNG at ``path`` and close the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(size[0] * panels, size[1]), squeeze=False)
    try:
        yield figure, list(axes[0])
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def plot_curves(curves, path, title, panels):
    """Save a PNG of learning curves, one subplot per panel.

    ``curves``: ``{label: {series name: [values per epoch]}}``; ``panels``: list of
    ``(series name, y-axis label)``.
    """
    with saved_figure(path, len(panels)) as (figure, axes):
        for axis, (series, ylabel) in zip(axes, panels):
            for label, values in curves.items():
                points = values[series]
                axis.plot(range(1, len(points) + 1), points, marker="o", label=label)
            axis.set_xlabel("epoch")
            axis.xaxis.get_major_locator().set_params(integer=True)
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
        axes[0].legend()
        figure.suptitle(title)
    return Path(path)
