"""Where a benchmark ran: versions, device, machine and source commit, for reports and
``fusedrnn info`` (re-exported by :mod:`fusedrnn.bench`). Nothing here runs at import."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__


def triton_version():
    """The installed Triton's version, or ``"not installed"``."""
    for name in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def _cpuinfo():
    """The first processor's ``/proc/cpuinfo`` fields, lower-case keys ({} without it)."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


# The flags that decide the cpu backend's paths (blas.h, bf16_product.h, avx512_rows.cpp).
CPU_FEATURES = ("avx2", "avx512f", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_id(fields=None):
    """Vendor, family, model and the :data:`CPU_FEATURES` present, from ``/proc/cpuinfo``
    (``fields``: its parsed fields): a virtual machine may name two CPU generations alike
    ("AMD EPYC" is a Zen 4 at family 25 and a Zen 5 at 26). None where it is not known."""
    fields = _cpuinfo() if fields is None else fields
    if "vendor_id" not in fields:
        return None
    flags = set(fields.get("flags", "").split())
    present = " ".join(f for f in CPU_FEATURES if f in flags) or "none of " + " ".join(CPU_FEATURES)
    return (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}; {present}")


def git_commit():
    """``(commit, dirty)`` of the source checkout fusedrnn is imported from; where that is no
    git checkout (a copy of the working tree on another machine), ``FUSEDRNN_COMMIT`` as the
    caller gave it with dirty unknown (``None``), else ``(None, None)``."""
    package = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / "fusedrnn").resolve() == package:
            # dirty: the package's own files differ from the commit (untracked ones included)
            return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or no repository
    # (fusedrnn sitting inside some other repository, e.g. a venv's, is not its checkout)
    return os.environ.get("FUSEDRNN_COMMIT") or None, None


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
        "cpu_id": cpu_id(), "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "gpus": gpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "triton": triton_version(), "fusedrnn": __version__,
        "git_commit": commit, "git_dirty": dirty, "argv": sys.argv[1:],
    }
