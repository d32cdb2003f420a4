"""Run one pytest selection as N processes at once:
``pytest_shards.py N OUT_PREFIX [RUN_FLAGS...] -- SELECTION...``.

The GPU check's test stage compiles Triton kernels for every configuration its tests launch,
one at a time, on one core: a time limit can cut it short while the machine's other cores
idle. This collects the tests ``pytest SELECTION`` would run (paths, ``-m``, ``-k``,
``--ignore``), deals them round-robin to N processes (test by test, so each shard gets a
share of every file), runs them together with RUN_FLAGS (writing ``OUT_PREFIX-K.log`` and
``OUT_PREFIX-K.xml``), then prints every shard's summary
line and its FAILED/ERROR lines. Exit status: 0 only if every shard passed (pytest's 5, no
tests collected, counts as passed for a shard that got none). SIGTERM (the stage's
``timeout``) stops every shard.
"""

import signal
import subprocess
import sys


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
    processes = []
    for k in range(shards):
        mine = ids[k::shards]
        if not mine:
            continue
        log = open(f"{prefix}-{k}.log", "w")
        command = [sys.executable, "-m", "pytest", *flags, f"--junitxml={prefix}-{k}.xml",
                   *mine]
        processes.append((k, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT),
                          log))

    def stop(signum, frame):
        for _, process, _ in processes:
            process.terminate()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    failed = False
    for k, process, log in processes:
        code = process.wait()
        log.close()
        failed |= code not in (0, 5)
        lines = open(f"{prefix}-{k}.log").read().splitlines()
        last = lines[-1] if lines else "(no output)"
        print(f"shard {k}: exit {code}: {last}")
        for line in lines:
            if line.startswith(("FAILED ", "ERROR ")):
                print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
