"""Run one pytest selection as N processes at once:
``pytest_shards.py N OUT_PREFIX [RUN_FLAGS...] -- SELECTION...``.

The GPU check's test stage compiles Triton kernels for every configuration its tests launch,
one at a time, on one core: a time limit can cut it short while the machine's other cores
idle. This collects the tests ``pytest SELECTION`` would run (paths, ``-m``, ``-k``,
``--ignore``), deals them round-robin to N processes (test by test, so each shard gets a
share of every file), runs them together with RUN_FLAGS (writing ``OUT_PREFIX-K.log`` and
``OUT_PREFIX-K.xml``), and prints each shard's summary line (or, for one that crashed or
was stopped, the test it was running) and its FAILED/ERROR lines as it ends. Exit status: 0 only if every shard passed (pytest's 5, no
tests collected, counts as passed for a shard that got none). SIGTERM (the stage's
``timeout``) stops every shard.
"""

import signal
import subprocess
import sys
import time


def collect(args):
    """The node ids ``pytest args`` selects."""
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
                         capture_output=True, text=True)
    if run.returncode not in (0, 5):
        sys.stdout.write(run.stdout + run.stderr)
        raise SystemExit(f"pytest_shards: collection failed ({run.returncode})")
    return [line.strip() for line in run.stdout.splitlines() if "::" in line]


def main(argv):
    if len(argv) < 3 or "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    shards, prefix = int(argv[0]), argv[1]
    flags, selection = argv[2:split], argv[split + 1:]
    ids = collect(selection)
    print(f"pytest_shards: {len(ids)} tests in {shards} shards", flush=True)
    running = {}  # shard: its process, until it ends

    def stop(signum, frame):
        for k, process in running.items():
            process.terminate()
            report(prefix, k, f"stopped by signal {signum}")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    for k in range(shards):
        mine = ids[k::shards]
        if not mine:
            continue
        with open(f"{prefix}-{k}.log", "w") as log:
            command = [sys.executable, "-m", "pytest", *flags, f"--junitxml={prefix}-{k}.xml",
                       *mine]
            running[k] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    failed = False
    while running:  # each shard reported as it ends, whatever the order
        for k, process in list(running.items()):
            code = process.poll()
            if code is not None:
                del running[k]
                failed |= code not in (0, 5)
                report(prefix, k, f"exit {code}")
        time.sleep(0.2)
    return 1 if failed else 0


RESULTS = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")


def report(prefix, k, how):
    """Print shard ``k``'s end (``how``), its summary line or, where it has none (killed,
    crashed), the test it was running, then its FAILED/ERROR lines (pytest's summary form
    and ``-v``'s result form)."""
    with open(f"{prefix}-{k}.log", errors="replace") as log:
        lines = log.read().splitlines()
    summary = lines[-1] if lines and lines[-1].startswith("=") else None
    print(f"shard {k}: {how}: {summary or 'no summary, running ' + running_test(lines)}")
    for line in lines:
        words = line.split()
        if line.startswith(("FAILED ", "ERROR ")) or ("::" in line and len(words) > 1
                                                    and words[1] in ("FAILED", "ERROR")):
            print(line[:200])
    sys.stdout.flush()


def running_test(lines):
    """The test ``-v`` output shows started and not finished, or "(unknown)"."""
    for line in reversed(lines):
        words = line.split()
        if words and "::" in words[0]:
            return "(unknown)" if len(words) > 1 and words[1] in RESULTS else words[0]
    return "(unknown)"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
