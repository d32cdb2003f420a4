"""Helpers of the console script's tests (test_cli.py, test_cli_bench.py): running
``fusedrnn.cli.main`` in-process, reading its table, and backend doubles."""

import contextlib
import io
import re

from fusedrnn import backends
from fusedrnn.backends import Availability, Backend
from fusedrnn.cli import main


def run_main(argv):
    """``main(argv)`` in-process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def parse_table(text):
    """The rows of the printed table as dicts keyed by column name, cut at the dash line."""
    lines = text.splitlines()
    dash_index = next(i for i, line in enumerate(lines) if re.fullmatch(r"[- ]+", line))
    header, dashes = lines[dash_index - 1], lines[dash_index]
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    names = [header[start:end].strip() for start, end in spans]
    rows = []
    for line in lines[dash_index + 1:]:
        if not line.strip() or line.startswith("ratio ="):
            break
        cells = [line[start:end].strip() for start, end in spans[:-1]]
        cells.append(line[spans[-1][0]:].strip())
        row = dict(zip(names, cells))
        rest = line[spans[names.index("median ms")][0]:].strip()
        if rest.startswith(("error:", "unavailable:")):  # a message runs to the end of the line
            row["median ms"] = rest
        rows.append(row)
    return rows


class UnavailableBackend(Backend):
    name = "test_unavailable"

    def available(self):
        return Availability(False, "no such hardware in this test")


class BrokenBackend(Backend):
    """Available, but its kernels raise (the base class's forward)."""

    name = "test_broken"


def registered(*doubles):
    """Register the test doubles ``doubles`` for a test (a fixture's body)."""
    for backend in doubles:
        backends.register(backend)
    yield
    for backend in doubles:
        backends.unregister(backend.name)
