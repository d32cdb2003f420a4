"""The Triton backend's plan (which kernel a call runs, and why: ``backends/triton/plan.py``)
and the cooperative kernels' launch around it (``cooperative.py``): kernel choice from the
sizes and the device, refusals and their reasons, batch groups, the grid barrier, and the
backend's availability. The kernels' results against the reference backend are in
test_triton.py."""

import pytest
import torch

import fusedrnn
from fusedrnn import backends
from fusedrnn.backends import BackendUnavailableError, Call

pytestmark = pytest.mark.requires_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_plan_picks_the_kernel_from_the_sizes(monkeypatch, capable_triton):
    from fusedrnn.backends.triton import plan

    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    bf16, fp32 = torch.bfloat16, torch.float32
    assert plan.choose("lstm", 64, 64, bf16).kernel == "persistent"
    assert plan.choose("lstm", 768, 768, bf16).kernel == "cooperative"
    assert plan.choose("lstm", 4096, 4096, bf16).kernel == "step"
    assert "fit one program" in plan.choose("gru", 33, 33, fp32).reason
    # float32 tiles stop at 64 wide (the RNN's 128x128 spilled: it splits over programs);
    # the LSTM's 4x64x64 fits.
    assert plan.choose("lstm", 64, 64, fp32).kernel == "persistent"
    assert plan.choose("gru", 64, 64, fp32).kernel == "persistent"
    assert plan.choose("rnn_tanh", 128, 128, fp32).kernel == "cooperative"
    assert plan.choose("rnn_tanh", 128, 128, bf16).kernel == "persistent"
    # W_hr counts too: 4x64x32 + 32x64 fits, 4x128x32 + 32x128 is over the limit; projected
    # hidden tiles stop at 64 (4x128x16 + 16x128 spilled in bfloat16).
    assert plan.choose("lstm", 64, 32, bf16).kernel == "persistent"
    assert plan.choose("lstm", 128, 32, bf16).kernel is None
    assert plan.choose("lstm", 128, 16, bf16).kernel is None
    assert plan.choose("lstm", 16, 16, bf16).num_warps == 4
    assert plan.choose("lstm", 64, 64, bf16).num_warps == 8
    assert plan.choose("lstm", 4096, 4096, bf16).num_warps == plan.STEP_NUM_WARPS
    big_proj = plan.choose("lstm", 1024, 256, bf16)
    assert big_proj.kernel is None and "proj_size" in big_proj.reason
    ok, why = backends.get("triton").supports(torch.device(DEVICE), torch.float32,
                                              Call("lstm", 1024, 256))
    assert not ok and "proj_size" in why
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "sideways")
    assert "must be auto, or one or more" in plan.choose("lstm", 8, 8, bf16).reason
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent, step")
    assert plan.choose("lstm", 768, 768, bf16).kernel == "step"  # no cooperative kernel
    assert plan.choose("lstm", 64, 64, bf16).kernel == "persistent"
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent,cooperative")
    assert plan.choose("lstm", 768, 768, bf16).kernel == "cooperative"
    none_left = plan.choose("lstm", 4096, 4096, bf16)
    assert none_left.kernel is None and "FUSEDRNN_TRITON_KERNEL is persistent,cooperative" in \
        none_left.reason


def test_cooperative_kernels_need_triton_3_4(monkeypatch):
    """With a Triton that cannot build them, the plan passes the cooperative kernels over and
    says why; forced, there is no kernel, with that reason."""
    import triton

    from fusedrnn.backends.triton import plan

    monkeypatch.setattr(triton, "__version__", "3.3.1")
    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    variant = plan.choose("lstm", 768, 768, torch.bfloat16, 132)
    assert variant.kernel == "step"
    assert "cooperative kernels need Triton 3.4 or newer (this is 3.3.1)" in variant.reason
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    forced = plan.choose("lstm", 768, 768, torch.bfloat16, 132)
    assert forced.kernel is None and forced.reason == (
        "weight tiles 4x1024x1024 are over 16384 elements, and cooperative kernels need "
        "Triton 3.4 or newer (this is 3.3.1), and FUSEDRNN_TRITON_KERNEL is cooperative")
    # tiles that fit: the setting is the reason, said once
    assert plan.choose("lstm", 64, 64, torch.bfloat16, 132).reason == (
        "FUSEDRNN_TRITON_KERNEL is cooperative, and cooperative kernels need Triton 3.4 or "
        "newer (this is 3.3.1)")
    monkeypatch.setattr(triton, "__version__", "3.4.0")
    assert plan.choose("lstm", 768, 768, torch.bfloat16, 132).kernel == "cooperative"


def test_plan_splits_the_hidden_units_over_resident_programs(monkeypatch, capable_triton):
    """Cooperative: 8 units a program, more where there would be more programs than can be
    resident (one per multiprocessor: 132 on the H200), and only while a program's slice of
    W_hh fits its limit; forced, the limit does not count but residency does."""
    from fusedrnn.backends.triton import plan

    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    bf16, fp32 = torch.bfloat16, torch.float32
    lstm = plan.choose("lstm", 768, 768, bf16, resident=132)
    assert (lstm.kernel, lstm.block_h, lstm.block_p, lstm.programs) == ("cooperative", 8, 1024, 96)
    assert "96 programs" in lstm.reason and lstm.split_k == lstm.num_warps == 8
    rnn = plan.choose("rnn_tanh", 2048, 2048, bf16, resident=132)
    assert (rnn.kernel, rnn.block_h, rnn.programs) == ("cooperative", 16, 128)
    assert plan.choose("lstm", 1024, 1024, bf16, resident=100).kernel == "step"  # 4x16x1024
    over = plan.choose("lstm", 1024, 1024, fp32, resident=132)
    assert over.kernel == "step" and "cooperative slices of 4x8x1024 are over" in over.reason
    assert plan.choose("lstm", 256, 256, fp32).kernel == "cooperative"
    assert plan.choose("lstm", 40, 20, bf16).kernel == "persistent"  # projected: never split
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    forced = plan.choose("lstm", 4096, 4096, bf16, resident=132)
    assert (forced.kernel, forced.programs) == ("cooperative", 128) and "forced" in forced.reason
    assert plan.choose("lstm", 33, 33, fp32).programs == 5
    projected = plan.choose("lstm", 40, 20, bf16)
    assert projected.kernel is None and "FUSEDRNN_TRITON_KERNEL is cooperative" in projected.reason


def test_cooperative_launches_synchronise_on_a_gpu_or_with_one_program():
    """The interpreter runs a launch's programs one after another: several programs there
    take one launch per step, a single one (or any number on a GPU) one launch in all."""
    from fusedrnn.backends.triton import cooperative, plan

    one, five = (plan.Variant("cooperative", "", 8, 16, 4, n) for n in (1, 5))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cooperative.synchronised(cpu, one) and not cooperative.synchronised(cpu, five)
    assert cooperative.synchronised(cuda, five)
    assert cooperative.resident_programs(cpu) is None


def test_sizes_past_32_bit_offsets_are_declined_with_the_reason():
    """The kernels' offsets are int32: a call whose gates would have 2^31 elements or more
    is declined (auto falls back, an explicit request raises with this reason), not run
    with offsets that wrap; sizes unknown as plain ints (torch.compile) are not judged."""
    triton_backend = backends.get("triton")
    device = torch.device(DEVICE)
    fits = Call("lstm", 1024, 1024, batch=512, steps=1023)  # 4 * 1024 * 512 * 1023 < 2^31
    too_big = Call("lstm", 1024, 1024, batch=512, steps=1024)
    assert triton_backend.supports(device, torch.float32, fits) == (True, "")
    ok, why = triton_backend.supports(device, torch.float32, too_big)
    assert not ok and "index in 32 bits" in why and "2147483648 elements" in why
    assert triton_backend.supports(device, torch.float32, Call("lstm", 1024, 1024, batch=512))[0]


def test_launchers_raise_where_the_plan_on_the_device_has_no_kernel(monkeypatch, capable_triton):
    """The launchers plan with the device's resident programs, as ``supports`` does: with
    132 multiprocessors a bfloat16 RNN of hidden 4096 needs slices of 1x32x4096, over the
    limit, so ``persistent,cooperative`` leaves it no kernel: both say so, neither runs the
    step kernel. Sizes past the int32 offsets (a vmapped batch can grow there after
    ``supports``) raise in the launchers too."""
    from fusedrnn.backends.triton import cooperative, plan

    monkeypatch.setattr(cooperative, "limits", lambda device: (132, None))
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent,cooperative")
    ok, why = backends.get("triton").supports(torch.device(DEVICE), torch.bfloat16,
                                              Call("rnn_tanh", 4096, 4096))
    assert not ok and "1x32x4096 are over 32768" in why
    x = torch.empty(3, 2, 4, dtype=torch.bfloat16)
    with pytest.raises(BackendUnavailableError, match="1x32x4096 are over 32768"):
        plan.variant_for("rnn_tanh", 4096, 4096, x)
    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL")
    huge = torch.empty(1024, 512, 4, device="meta")  # 1024 x 512 x 4 x 1024 gates = 2^31
    with pytest.raises(BackendUnavailableError, match="index in 32 bits"):
        plan.variant_for("lstm", 1024, 1024, huge)


def test_a_refused_cooperative_launch_runs_one_launch_per_step(monkeypatch):
    """Where the driver refuses a cooperative launch (its programs cannot all be resident),
    the sequence runs one launch per step, unsynchronised, instead of a barrier that would
    wait forever; other errors propagate."""
    from fusedrnn.backends.triton import cooperative, plan

    assert cooperative.launch_options(torch.device("cpu")) == {}
    calls = []

    def fake_wrap(kernel):
        def run(*args, SYNC, **options):
            calls.append((args[2], args[3], SYNC, options.get("launch_cooperative_grid")))
            if SYNC:
                raise RuntimeError(failure)
        return {(5, 1): run}

    monkeypatch.setattr(cooperative, "wrap_triton", fake_wrap)
    monkeypatch.setattr(cooperative, "synchronised", lambda device, variant: True)
    monkeypatch.setattr(cooperative, "launch_options",
                        lambda device: {"launch_cooperative_grid": True})
    variant = plan.Variant("cooperative", "", 8, 64, 4, 5)
    failure = "Triton Error [CUDA]: too many blocks in cooperative launch"
    cooperative.launch(None, variant, 3, (torch.zeros(1),), (3, 4, 40))
    assert calls == [(0, 3, True, True), (0, 1, False, None), (1, 2, False, None),
                     (2, 3, False, None)]
    failure = "Triton Error [CUDA]: an illegal memory access was encountered"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cooperative.launch(None, variant, 3, (torch.zeros(1),), (3, 4, 40))


def test_batch_groups_fill_the_multiprocessors_the_hidden_split_leaves():
    """Programs per group times groups stays within the resident programs; a group is whole
    batch tiles of 16 rows; the interpreter (no residency limit) takes a group per tile."""
    from fusedrnn.backends.triton import cooperative, plan

    def groups(programs, batch, resident):
        return cooperative.batch_groups(plan.Variant("cooperative", "", 8, 64, 8, programs),
                                        batch, resident)

    assert groups(96, 64, 132) == (1, 64)  # B64 H768: no room for a second group
    assert groups(32, 64, 132) == (4, 16)  # B64 H256: 128 programs, a tile each
    assert groups(32, 256, 132) == (4, 64)
    assert groups(16, 20, 132) == (2, 16)
    assert groups(5, 19, None) == (2, 16)


def test_the_cooperative_kernels_grid_barrier_counts_every_program_at_every_step():
    """``grid_barrier`` alone (``barrier_bench``): after 50 barriers of P programs the
    counter is 50 P, with no program left waiting. On a GPU with programs running at once
    (8, and one per multiprocessor); the interpreter, which runs them one after another,
    can only check a single program."""
    from fusedrnn.backends.triton import barrier_bench, cooperative

    resident = cooperative.resident_programs(torch.device(DEVICE))
    for programs in [1] if resident is None else [1, 8, resident]:
        counter = barrier_bench.run(programs, 50, DEVICE)
        assert counter.item() == 50 * programs


def test_auto_never_picks_triton_on_cpu():
    for call in (Call("lstm", 8, 8), Call("rnn_tanh", 8, 8)):
        choice = backends.select(None, torch.device("cpu"), torch.float32, call)
        assert choice.name in ("cpu", "reference")


def test_triton_reports_available():
    assert fusedrnn.available_backends()["triton"].available
