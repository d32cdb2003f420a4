"""The cuda backend's choice between its persistent and stepwise kernels (host side: runs on
the CPU with a described device; the shared-memory layout is the extension's own)."""

import pytest
import torch

from fusedrnn import _extension
from fusedrnn.backends import cuda_plan, cuda_streams, get
from fusedrnn.backends.cuda_plan import Device

pytestmark = pytest.mark.requires_ext

H200 = Device("NVIDIA H200", (9, 0), 132, 227 * 1024)
SMEM_PER_SM = 228 * 1024


def smem_bytes(*args):
    return _extension.CUDA.load().persistent_smem_bytes(*args)


def by_shared_memory(kernel, dtype, smem):
    """Blocks per multiprocessor as shared memory alone allows (1 KiB reserved per block)."""
    return SMEM_PER_SM // (smem + 1024)


def any_cluster(kernel, dtype, smem, cluster):
    return 4


def choose(cell="lstm", hidden=768, dtype="bfloat16", device=H200, backward=False,
           blocks_per_sm=by_shared_memory, max_clusters=any_cluster):
    itemsize = 4 if dtype == "float32" else 2
    occupancy = cuda_plan.Occupancy(smem_bytes, blocks_per_sm, max_clusters)
    return cuda_plan.choose(cell, hidden, dtype, itemsize, device, backward, occupancy)


@pytest.fixture(autouse=True)
def auto_kernel(monkeypatch):
    monkeypatch.delenv(cuda_plan.ENV_VAR, raising=False)


def test_layout_bytes_follow_the_slice():
    # forward LSTM, 8 units of H 768 in bf16: 32 rows of (768 + 8) elements, then
    # 2 row tiles x 4 column groups of 16 x 16 float32 partial products
    assert smem_bytes(4, 8, 768, 2, False, False) == 32 * 776 * 2 + 2 * 4 * 256 * 4
    # backward GRU, 16 units of H 33 in float32: 16 rows of (3 * 48 + 8), 1 tile x 8 groups
    assert smem_bytes(3, 16, 33, 4, True, False) == 16 * 152 * 4 + 8 * 256 * 4
    # in a cluster, plus the gathered B tile (16 x (48 + 8)) and two slots of 16 rows of
    # its 32 units
    assert (smem_bytes(4, 32, 48, 2, False, True) - smem_bytes(4, 32, 48, 2, False, False)
            == 16 * 56 * 2 + 2 * 16 * 32 * 2)
    assert smem_bytes(4, 8, 768, 4, False, False) > smem_bytes(4, 8, 768, 2, False, False)
    assert smem_bytes(4, 16, 768, 2, False, False) > smem_bytes(4, 8, 768, 2, False, False)


@pytest.mark.parametrize("hidden", [1, 33, 128, 131, 768, 1024, 4096])
def test_forward_blocks_fit_one_per_multiprocessor(hidden):
    units = cuda_plan.forward_units(hidden, 132)
    assert units % 4 == 0 and units >= 4
    assert -(-hidden // units) <= 132
    assert units == 4 or -(-hidden // (units - 4)) > 132  # no smaller multiple of 4 would do


def test_flashrnn_shape_runs_persistent_both_ways():
    forward = choose()
    assert forward.kernel == "persistent" and not forward.cluster
    assert (forward.units, forward.blocks) == (8, 96)
    assert "grid of 96 blocks of 8 units" in forward.reason and "grid barrier" in forward.reason
    backward = choose(backward=True)
    assert backward.kernel == "persistent" and not backward.cluster
    assert (backward.units, backward.blocks) == (16, 48)


@pytest.mark.parametrize("cell, hidden, units, blocks", [
    ("lstm", 20, 32, 1), ("lstm", 256, 32, 8), ("lstm", 512, 32, 16), ("gru", 512, 40, 13)])
def test_hopper_runs_what_fits_one_cluster_in_clusters(cell, hidden, units, blocks):
    plan = choose(cell, hidden)
    assert plan.kernel == "persistent" and plan.cluster
    assert (plan.units, plan.blocks) == (units, blocks)
    assert f"a cluster of {blocks} blocks per 16 batch rows" in plan.reason
    backward = choose(cell, 256, backward=True)
    assert backward.cluster and (backward.units, backward.blocks) == (16, 16)
    assert not choose(cell, 272, backward=True).cluster  # 17 blocks of 16


@pytest.mark.parametrize("dtype, forward_limit", [("bfloat16", 608), ("float32", 368)])
def test_h200_cluster_range_is_the_readmes(dtype, forward_limit):
    """The README's claim: the LSTM forward in clusters up to hidden 608 in 16-bit types (368
    in float32), the backward up to 256."""
    for hidden in range(1, forward_limit + 50):
        assert choose("lstm", hidden, dtype).cluster == (hidden <= forward_limit), hidden
    for hidden in range(1, 300):
        assert choose("lstm", hidden, dtype, backward=True).cluster == (hidden <= 256), hidden


def test_cluster_needs_hopper_and_a_placeable_cluster():
    ampere = Device("NVIDIA A100", (8, 0), 108, 163 * 1024)
    plan = choose(hidden=256, device=ampere)
    assert plan.kernel == "persistent" and not plan.cluster
    assert not choose(hidden=256, max_clusters=lambda *args: 0).cluster
    # float32 at hidden 512: 128 rows of 520 floats per block exceed the shared memory
    assert not choose(hidden=512, dtype="float32").cluster


def test_slice_over_the_shared_memory_falls_back_with_the_sizes():
    # float32 backward at H 1024: 16 columns x 4096 gate rows x 4 bytes alone are 256 KiB
    plan = choose(hidden=1024, dtype="float32", backward=True)
    assert plan.kernel == "stepwise"
    needed = smem_bytes(4, 16, 1024, 4, True, False)
    assert (f"backward slice of W_hh for 16 of 1024 units needs {needed} bytes of shared "
            f"memory per block, over the {227 * 1024} of NVIDIA H200") in plan.reason
    assert choose(hidden=1024, dtype="float32").kernel == "persistent"
    assert choose(hidden=1024, dtype="bfloat16", backward=True).kernel == "persistent"


def test_slice_just_over_the_shared_memory_says_by_how_much():
    # A slice 256 bytes over the limit: in whole KiB both sizes read 227.
    needed = smem_bytes(3, 16, 2321, 2, True, False)
    assert 0 < needed - 227 * 1024 < 1024
    plan = choose(cell="gru", hidden=2321, dtype="float16", backward=True)
    assert plan.kernel == "stepwise"
    assert f"needs {needed} bytes of shared memory per block, over the {227 * 1024}" in plan.reason


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_h200_runs_persistent_up_to_hidden_1024(cell, dtype):
    """The README's claim: everything but the float32 LSTM backward above hidden 864."""
    for hidden in (1, 33, 128, 256, 512, 768, 864, 880, 1024):
        for backward in (False, True):
            plan = choose(cell, hidden, dtype, backward=backward)
            expected = ("stepwise" if (cell, dtype, backward) == ("lstm", "float32", True)
                        and hidden > 864 else "persistent")
            assert plan.kernel == expected, (hidden, backward, plan.reason)


def test_grid_that_cannot_be_resident_falls_back():
    plan = choose(blocks_per_sm=lambda kernel, dtype, smem: 0)
    assert plan.kernel == "stepwise"
    assert "cluster: the forward slice of W_hh for 48 of 768 units needs" in plan.reason
    assert "grid: the forward grid of 96 blocks cannot be resident at once" in plan.reason
    assert "(0 per multiprocessor x 132)" in plan.reason
    # more blocks than multiprocessors need two per multiprocessor
    small = Device("small", (8, 0), 10, 100 * 1024)
    assert choose(hidden=320, device=small, backward=True,
                  blocks_per_sm=lambda kernel, dtype, smem: 1).kernel == "stepwise"
    assert choose(hidden=320, device=small, backward=True,
                  blocks_per_sm=lambda kernel, dtype, smem: 2).kernel == "persistent"


def test_kernels_built_for_older_gpus_only_fall_back():
    plan = choose(hidden=256, blocks_per_sm=lambda *args: -1, max_clusters=lambda *args: -1)
    assert plan.kernel == "stepwise"
    assert "cluster: the extension holds no sm_90 code" in plan.reason
    assert "grid: the extension holds no code for compute capability 8.0+" in plan.reason


def test_no_hidden_unit_runs_stepwise():
    assert choose(hidden=0).kernel == "stepwise"


def test_occupancy_is_asked_for_the_right_kernel():
    asked = []
    choose(cell="gru", backward=True,
           blocks_per_sm=lambda kernel, dtype, smem: asked.append((kernel, dtype, smem)) or 1)
    assert asked == [("gru_bwd", "bfloat16", smem_bytes(3, 16, 768, 2, True, False))]
    placed = []
    choose(cell="gru", hidden=256, backward=True,
           max_clusters=lambda *args: placed.append(args) or 1)
    assert placed == [("gru_bwd", "bfloat16", smem_bytes(3, 16, 256, 2, True, True), 16)]


def test_old_gpus_run_stepwise():
    plan = choose(device=Device("Tesla T4", (7, 5), 40, 64 * 1024))
    assert plan.kernel == "stepwise" and "compute capability 8.0 or newer" in plan.reason


def test_environment_forces_a_kernel(monkeypatch):
    monkeypatch.setenv(cuda_plan.ENV_VAR, "stepwise")
    assert choose().kernel == "stepwise"
    monkeypatch.setenv(cuda_plan.ENV_VAR, "persistent")
    assert choose().kernel == "persistent"
    with pytest.raises(RuntimeError, match="FUSEDRNN_CUDA_KERNEL=persistent cannot run"):
        choose(hidden=1024, dtype="float32", backward=True)
    monkeypatch.setenv(cuda_plan.ENV_VAR, "grid")
    assert not choose(hidden=256).cluster
    monkeypatch.setenv(cuda_plan.ENV_VAR, "cluster")
    assert choose(hidden=256).cluster
    with pytest.raises(RuntimeError, match="FUSEDRNN_CUDA_KERNEL=cluster cannot run"):
        choose(hidden=768)
    monkeypatch.setenv(cuda_plan.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="FUSEDRNN_CUDA_KERNEL must be one of"):
        choose()


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backend_runs_the_planned_op(monkeypatch, cell, backward):
    stage = "bwd" if backward else "fwd"
    w_hh = torch.empty(4 * 64 if cell == "lstm" else 3 * 64, 64)
    plans = {"persistent": cuda_plan.Plan("persistent", "test", units=16, cluster=True),
             "stepwise": cuda_plan.Plan("stepwise", "test")}
    backend = get("cuda")
    for kernel, plan in plans.items():
        monkeypatch.setattr(cuda_plan, "plan_call", lambda *args, plan=plan: plan)
        op, extra = backend.recurrence_op(cell, w_hh, backward)
        expected = "persistent" if kernel == "persistent" else "recurrence"
        assert op is getattr(torch.ops.fusedrnn, f"{cell}_{expected}_{stage}")
        assert extra == ((16, True) if kernel == "persistent" else ())


def test_persistent_ops_have_the_recurrence_ops_fake_shapes():
    meta = dict(device="meta")
    xproj, w_hh = torch.empty(5, 3, 32, **meta), torch.empty(32, 8, **meta)
    state = torch.empty(3, 8, **meta)
    ops = torch.ops.fusedrnn
    args = (xproj, None, w_hh, state, state, None, False, True)
    expected = [t.shape for t in ops.lstm_recurrence_fwd(*args)]
    assert [t.shape for t in ops.lstm_persistent_fwd(*args, 4, False)] == expected
    assert [t.shape for t in ops.lstm_persistent_fwd(*args, units=4, cluster=True)] == expected
    y, _, _, gates, cells = ops.lstm_recurrence_fwd(*args)
    bwd = (y, state, state, w_hh, state, None, gates, cells, False)
    assert ([t.shape for t in ops.lstm_persistent_bwd(*bwd, 16, True)]
            == [t.shape for t in ops.lstm_recurrence_bwd(*bwd)])


@pytest.mark.parametrize("hidden, backward, design", [
    (512, False, "cluster"), (768, False, "grid"), (256, True, "cluster"), (512, True, "grid")])
def test_directions_share_the_gpu_on_two_streams_except_on_the_grid(hidden, backward, design):
    plan = choose(hidden=hidden, backward=backward)
    assert plan.kernel == "persistent" and plan.cluster == (design == "cluster")
    assert cuda_streams.overlaps(plan) == (design == "cluster")


def test_stepwise_directions_go_on_two_streams(monkeypatch):
    monkeypatch.setenv(cuda_plan.ENV_VAR, "stepwise")
    assert cuda_streams.overlaps(choose())
