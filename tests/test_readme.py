"""The README's promises about the repository itself: every results folder or file it cites
exists (each speed claim cites one), and its quickstart is the two commands CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_cited_result_exists():
    cited = {path.rstrip(".") for path in re.findall(r"benchmarks/results/[\w./-]+", README)}
    assert len(cited) >= 10  # the performance section cites its files this way
    missing = sorted(path for path in cited if not (ROOT / path).exists())
    assert missing == []


def test_quickstart_is_the_two_commands_ci_runs():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quickstart, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make bench", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M) and re.search(r"^make bench\b", ci, re.M)
