"""fusedrnn seq2seq: the synthetic tasks, exact-match scoring and the CLI on a tiny run."""

import contextlib
import io
import random

import pytest
import torch

for _package in ("tqdm", "matplotlib"):
    pytest.importorskip(_package)

from fusedrnn.apps import seq2seq  # noqa: E402
from fusedrnn.apps.seq2seq import BOS, EOS, SequenceTask  # noqa: E402
from fusedrnn.cli import main  # noqa: E402


def test_reverse_batch():
    task = SequenceTask("reverse", symbols=5, min_len=1, max_len=4)
    source, lengths, target_input, target = task.batch([(3, 4, 5), (7,)])
    assert source.tolist() == [[3, 4, 5], [7, 0, 0]] and lengths.tolist() == [3, 1]
    assert target_input.tolist() == [[BOS, 5, 4, 3], [BOS, 7, 0, 0]]
    assert target.tolist() == [[5, 4, 3, EOS], [7, EOS, 0, 0]]
    assert SequenceTask("sort", 5, 1, 4).batch([(5, 3, 4)])[3].tolist() == [[3, 4, 5, EOS]]


def test_sample_is_distinct_and_respects_exclusions():
    task = SequenceTask("reverse", symbols=2, min_len=1, max_len=2)  # 6 strings exist
    excluded = {(3,), (3, 4)}
    drawn = task.sample(4, random.Random(0), excluded)
    assert len(set(drawn)) == 4 and not excluded & set(drawn)
    with pytest.raises(ValueError, match="only 6 exist"):
        task.sample(5, random.Random(0), excluded)


class Oracle(torch.nn.Module):
    """Generates the reversed source (plus EOS), or garbage when ``wrong``."""

    def __init__(self, wrong=False):
        super().__init__()
        self.wrong = wrong

    def generate(self, source, lengths, bos_id, eos_id, max_steps):
        rows = []
        for row, length in zip(source.tolist(), lengths.tolist()):
            out = [eos_id] if self.wrong else row[:length][::-1] + [eos_id]
            rows.append(out + [0] * (max_steps - len(out)))
        return torch.tensor(rows), None


def test_exact_match():
    task = SequenceTask("reverse", symbols=4, min_len=2, max_len=5)
    strings = task.sample(30, random.Random(1))
    assert seq2seq.exact_match(Oracle(), task, strings, "cpu", batch_size=7) == 1.0
    assert seq2seq.exact_match(Oracle(wrong=True), task, strings, "cpu") == 0.0


def test_seq2seq_cli(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["seq2seq", "--steps", "3", "--eval-every", "2", "--eval-size", "20",
                       "--hidden-size", "8", "--embedding-dim", "4", "--max-len", "5",
                       "--batch-size", "8", "--cell", "gru", "--out", str(tmp_path),
                       "--threads", "1"])
    assert status == 0 and "held-out exact match" in out.getvalue()
    report = (tmp_path / "seq2seq.md").read_text()
    assert "| 2 |" in report and "| 3 |" in report  # evaluated at step 2 and the last step
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_seq2seq_cli_rejects_bad_lengths(tmp_path):
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["seq2seq", "--min-len", "5", "--max-len", "2", "--out", str(tmp_path)])
    assert raised.value.code == 2 and "min_len" in err.getvalue()
