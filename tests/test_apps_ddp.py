"""``fusedrnn sentiment train`` data parallel: two CPU processes (gloo on 127.0.0.1) launched
as torchrun would (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) on the tiny
aclImdb fixture of :mod:`test_apps_imdb`."""

import contextlib
import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from test_apps_imdb import TINY, write_tree  # noqa: E402 (skips without tokenizers, tqdm)

from fusedrnn.apps import distributed, sentiment  # noqa: E402
from fusedrnn.cli import main  # noqa: E402

WORLD = 2

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank, port, data, out, dump):
    """One rank: the torchrun environment, the CLI, then this replica's weights to ``dump``."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    models = []
    build = sentiment.build_model
    sentiment.build_model = lambda *args: models.append(build(*args)) or models[-1]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["sentiment", "train", "--data", str(data), "--out", str(out),
                       "--epochs", "1", "--threads", "1", *TINY])
    torch.save({"status": status, "group_left": not torch.distributed.is_initialized(),
                "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                "model": models[0].state_dict()}, dump / f"rank{rank}.pt")


def test_shard_pads_evenly_and_covers_every_batch():
    batches = [[i] for i in range(5)]
    shards = [distributed.shard(batches, r, 2) for r in range(2)]
    assert shards == [[[0], [2], [4]], [[1], [3], [0]]]
    assert distributed.shard(batches, 0, 1) is batches
    assert distributed.shard(batches[:1], 2, 3) == [[0]]  # fewer batches than ranks


def test_two_process_training_keeps_replicas_identical(tmp_path):
    data = write_tree(tmp_path / "data")
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    mp.spawn(_rank_main, args=(free_port(), data, out, dump), nprocs=WORLD, join=True)
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for result in ranks:
        assert result["status"] == 0 and result["group_left"]
    assert "data parallel over 2 processes" in ranks[0]["stderr"]
    assert "best validation accuracy" in ranks[0]["stdout"]
    assert ranks[1]["stdout"] == ranks[1]["stderr"] == ""  # rank 1 neither prints nor logs
    for name, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][name]), name
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.json", "last.pt"]
    model, _, payload = sentiment.load_model(out / "best.pt")
    assert payload["epoch"] == 1
    last = torch.load(out / "last.pt", weights_only=True)
    for name, value in last["model"].items():
        assert torch.equal(value, ranks[0]["model"][name]), name
    assert sum(p.numel() for p in model.parameters()) > 0
