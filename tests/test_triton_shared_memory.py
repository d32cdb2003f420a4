"""The cooperative kernels' shared memory: the plan counts it at the pipeline stages the
launch uses, refuses a kernel (even forced) that a block cannot hold, and where Triton
refuses a launch for its resources anyway, a call under auto runs another kernel. What the
kernels compile to for sm_90 is checked against the plan's count by ``compile_check``
(``tests/test_triton_compile.py``)."""

import pytest
import torch

import fusedrnn
from fusedrnn import testing

pytestmark = pytest.mark.requires_triton

H200 = dict(resident=132, shared=232_448)  # multiprocessors, opt-in shared bytes a block
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def plan(monkeypatch, capable_triton):
    """The Triton plan, as with a Triton that builds the cooperative kernels (these tests
    launch none: the one that runs a call has its cooperative launch refused)."""
    from fusedrnn.backends.triton import plan

    monkeypatch.setattr(plan, "_refused", {}, raising=False)
    return plan


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_forced_float32_hidden_768_fits_the_h200(plan, monkeypatch, cell):
    """Its 1024-wide float32 state tile: at Triton's default 3 stages the LSTM forward took
    266,240 bytes and the GRU's 233,472, past the H200's 232,448."""
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    variant = plan.choose(cell, 768, 768, torch.float32, **H200)
    assert variant.kernel == "cooperative" and variant.block_p == 1024, variant.reason
    assert plan.COOPERATIVE_NUM_STAGES == 2
    assert plan.cooperative_shared_bytes(cell, 8, 1024, torch.float32) <= H200["shared"]


def test_a_forced_cooperative_kernel_past_shared_memory_is_refused(plan, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    variant = plan.choose("lstm", 2048, 2048, torch.float32, **H200)
    assert variant.kernel is None
    assert "4x16x2048 need" in variant.reason and "over the 232448 a block has" in variant.reason
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative,step")
    assert plan.choose("lstm", 2048, 2048, torch.float32, **H200).kernel == "step"
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    assert plan.choose("lstm", 2048, 2048, torch.float32).kernel == "cooperative"  # no limit


def test_the_planned_stages_count_a_state_tile_per_stage_past_the_first(plan, monkeypatch):
    two = plan.cooperative_shared_bytes("lstm", 8, 1024, torch.float32)
    monkeypatch.setattr(plan, "COOPERATIVE_NUM_STAGES", 3)
    assert plan.cooperative_shared_bytes("lstm", 8, 1024, torch.float32) == two + 16 * 1024 * 4
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    assert "shared memory" in plan.choose("lstm", 768, 768, torch.float32, **H200).reason


def test_the_cooperative_launch_runs_at_the_planned_stages(plan, monkeypatch):
    from fusedrnn.backends.triton import cooperative

    calls = []

    def fake_wrap(kernel):
        return {(5, 1): lambda *args, **options: calls.append(options.get("num_stages"))}

    monkeypatch.setattr(cooperative, "wrap_triton", fake_wrap)
    monkeypatch.setattr(cooperative, "synchronised", lambda device, variant: True)
    variant = plan.Variant("cooperative", "", 8, 64, 4, 5)
    cooperative.launch(None, variant, 3, (torch.zeros(1),), (3, 4, 40))
    assert calls == [plan.COOPERATIVE_NUM_STAGES]


def _refuse_cooperative_launches(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from fusedrnn.backends.triton import cooperative

    def out_of_shared_memory(*args, **kwargs):
        raise OutOfResources(266_240, 232_448, "shared memory")

    monkeypatch.setattr(cooperative, "_launch", out_of_shared_memory)
    return OutOfResources


def test_a_launch_refused_for_resources_runs_another_kernel_under_auto(plan, monkeypatch):
    """Triton's OutOfResources (a TritonError, not a RuntimeError) from a cooperative launch
    the plan chose: the call runs the step kernel, and so do later calls; forced, the error
    propagates."""
    out_of_resources = _refuse_cooperative_launches(monkeypatch)
    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    assert plan.choose("lstm", 72, 72, torch.float32).kernel == "cooperative"
    reference = fusedrnn.LSTM(5, 72, backend="reference", device=DEVICE)
    candidate = fusedrnn.LSTM(5, 72, backend="triton", device=DEVICE)
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(3, 2, 5, device=DEVICE)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x)
    out, grads = testing.outputs_and_grads(candidate, x)
    testing.assert_close_relative(out, out_ref, 1e-5, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-5, "gradients")
    replanned = plan.choose("lstm", 72, 72, torch.float32)
    assert replanned.kernel == "step" and "Triton refused its launch" in replanned.reason
    # on another kind of GPU (other limits) the refusal does not hold
    assert plan.choose("lstm", 72, 72, torch.float32, None, 232448).kernel == "cooperative"
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    with pytest.raises(out_of_resources):
        candidate(x)
