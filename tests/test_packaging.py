"""What a source distribution holds: everything that building fusedrnn from it reads."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files():
    if not (ROOT / ".git").exists():
        pytest.skip("the tracked files come from git, and this source tree is no checkout")
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True)
    return [name for name in listing.stdout.splitlines() if (ROOT / name).is_file()]


def test_the_sdist_holds_every_file_the_build_reads(tmp_path):
    """Every header and source of ``csrc/``, the package and the build's own files, in an
    sdist made without the CUDA extension, whose sources setup.py then does not list (so
    nothing but ``MANIFEST.in`` adds them; with ``FUSEDRNN_BUILD_CUDA=1`` setup.py refuses
    where the toolkit cannot build against torch, as for torch 2.6's CUDA 12 beside nvcc
    13). Made from a copy of the checkout: an sdist writes its metadata into the source
    tree."""
    files = _tracked_files()
    source = tmp_path / "source"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    environment = dict(os.environ, FUSEDRNN_BUILD_CUDA="0")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                   cwd=source, env=environment, check=True, capture_output=True)
    archive, = (tmp_path / "dist").glob("fusedrnn-*.tar.gz")
    with tarfile.open(archive) as sdist:
        held = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
    needed = [name for name in files if name.startswith(("csrc/", "fusedrnn/"))
              or name in ("setup.py", "pyproject.toml", "README.md")]
    missing = sorted(set(needed) - held)
    assert not missing, f"the sdist lacks {len(missing)} files the build reads: {missing[:10]}"
