"""What the ``cpu`` backend keeps between calls: the workspace pool's blocks
(``csrc/cpu/workspace_pool.h``) and ``fusedrnn.empty_cache``, which frees them with the
prepared products (``csrc/cpu/prepared_cache.h``)."""

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing

pytestmark = pytest.mark.requires_cpu_ext


def _train_step(module, steps, batch=8):
    module(testing.make_sequence(batch, steps, module.input_size))[0].square().sum().backward()


def test_shorter_sequences_reuse_the_pools_blocks(two_threads):
    """A training loop over sequences of varying length asks the pool for another size every
    step: the blocks a longer step freed serve a shorter one (up to twice the size asked
    for), so the pool holds what the longest step used, not a block of every past size."""
    cpu = _extension.CPU.load()
    module = fusedrnn.GRU(16, 64, backend="cpu")
    cpu.release_workspaces()
    _train_step(module, 60)
    in_use, held, _ = cpu.workspace_pool_bytes()
    assert in_use == 0 and held > 0
    for steps in (59, 50, 41, 33, 60):
        _train_step(module, steps)
        assert cpu.workspace_pool_bytes()[:2] == (0, held), steps
    _train_step(module, 20)  # the blocks are more than twice what it asks for: new ones
    assert cpu.workspace_pool_bytes()[1] > held


def test_empty_cache_frees_the_prepared_products_and_the_pools_blocks(two_threads):
    cpu = _extension.CPU.load()
    module = fusedrnn.LSTM(16, 64, num_layers=2, backend="cpu")
    x = testing.make_sequence(8, 6, 16)
    with torch.no_grad():
        expected = [module(x)[0] for _ in range(3)][-1]  # products kept from the second call
    _train_step(module, 6)
    assert cpu.prepared_cache_kept()[0] > 0 and cpu.workspace_pool_bytes()[1] > 0
    fusedrnn.empty_cache()
    assert cpu.prepared_cache_kept() == (0, 0) and cpu.workspace_pool_bytes() == (0, 0, 0)
    with torch.no_grad():
        assert torch.equal(module(x)[0], expected)


def test_empty_cache_loads_nothing(tmp_path):
    import subprocess
    import sys

    code = ("import sys, fusedrnn; fusedrnn.empty_cache(); "
            "print('fusedrnn._cpu' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"


def test_the_pool_keeps_its_larger_blocks_at_its_limit():
    """At the pool's limit (256 MiB cached) a freed block takes the place of smaller cached
    ones, never of larger ones (a training step's big workspace would come back from the
    system every step); a block of size 0 is not kept (nothing reuses one)."""
    cpu = _extension.CPU.load()
    mib = 1 << 20
    cpu.release_workspaces()
    for size, cached in ((200 * mib, [200]), (60 * mib, [200]), (30 * mib, [200, 30]),
                         (250 * mib, [250]), (0, [250]), (6 * mib, [250, 6])):
        block = cpu.workspace(size)
        assert block.numel() == size
        del block
        assert cpu.workspace_pool_bytes() == (0, sum(cached) * mib, len(cached)), size
    reused = cpu.workspace(4 * mib)  # a cached block up to twice the request serves it
    assert cpu.workspace_pool_bytes() == (6 * mib, 250 * mib, 1)
    del reused
    assert cpu.release_workspaces() == 256 * mib
    assert cpu.workspace_pool_bytes() == (0, 0, 0)
