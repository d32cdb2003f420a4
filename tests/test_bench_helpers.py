"""The helpers of ``fusedrnn bench``: its providers and modes (``fusedrnn.bench``), its timing
(``fusedrnn.bench_timing``) and its grids; the console script itself is in test_cli.py and
test_cli_bench.py."""

import pytest
import torch

from fusedrnn import backends, bench, bench_timing, testing


@pytest.mark.parametrize("cell", sorted(bench.CELLS))
def test_providers_share_weights_and_input(cell):
    case = bench.Case(cell, 3, 5, 4, 6, num_layers=2, bidirectional=True)
    torch_provider, fused_provider = bench.build_providers(case)
    assert torch_provider.label == "torch.nn" and isinstance(torch_provider.module,
                                                             torch.nn.RNNBase)
    assert torch.equal(torch_provider.input, fused_provider.input)
    assert torch_provider.input is not fused_provider.input
    for name, weight in fused_provider.module.named_parameters():
        assert torch.equal(weight, getattr(torch_provider.module, name)), name
    with torch.no_grad():
        expected = testing.flatten_outputs(torch_provider.module(torch_provider.input))
        actual = testing.flatten_outputs(fused_provider.module(fused_provider.input))
    testing.assert_close_relative(actual, expected, 1e-5, what=cell)


def _input_data(provider):
    x = provider.input
    return x.data if isinstance(x, torch.nn.utils.rnn.PackedSequence) else x


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode", ["training", "backward"])
def test_gradient_modes_produce_all_gradients_and_setup_clears_them(mode, packed):
    case = bench.Case("lstm", 3, 4, 3, 5, packed=packed)
    for provider in bench.build_providers(case):
        data = _input_data(provider)
        call, setup = bench.make_call(provider, mode)
        setup()
        assert data.grad is None
        assert all(p.grad is None for p in provider.module.parameters())
        call()
        assert data.grad is not None and data.grad.abs().sum() > 0
        assert all(p.grad is not None for p in provider.module.parameters())


def test_backward_mode_runs_the_forward_in_setup_and_only_backward_in_call():
    provider = bench.build_providers(bench.Case("gru", 2, 3, 4, 5), [backends.AUTO])[1]
    forwards = []
    provider.module.register_forward_hook(lambda *args: forwards.append("forward"))
    call, setup = bench.make_call(provider, "backward")
    setup()
    assert forwards == ["forward"]
    call()
    assert forwards == ["forward"] and provider.input.grad is not None


def test_forward_modes_record_a_graph_only_in_training_forward():
    case = bench.Case("lstm", 5, 8, 3, 4, packed=True)
    torch_provider, fused_provider = bench.build_providers(case)
    _, lengths = torch.nn.utils.rnn.pad_packed_sequence(torch_provider.input)
    assert bench.input_tokens(torch_provider.input) == lengths.sum() < case.batch * case.steps
    for provider in (torch_provider, fused_provider):
        graphs = []
        provider.module.register_forward_hook(lambda module, args, output: graphs.append(
            testing.flatten_outputs(output)[0].requires_grad))
        infer, setup = bench.make_call(provider, "inference")
        assert setup is None
        infer()
        forward, clear = bench.make_call(provider, "training_forward")
        clear()
        forward()
        assert graphs == [False, True], provider.label
    with pytest.raises(ValueError, match="unknown mode"):
        bench.make_call(fused_provider, "fast")


def test_time_call_runs_setup_outside_and_counts_calls():
    events = []
    times = bench_timing.time_call(lambda: events.append("call"), "cpu", warmup=2, repeats=5,
                                   setup=lambda: events.append("setup"))
    assert len(times) == 5 and all(t >= 0 for t in times)
    assert events == ["setup", "call"] * 7


def test_time_interleaved_alternates_the_order():
    order = []
    calls = {name: (lambda name=name: order.append(name), None) for name in ("a", "b")}
    times = bench_timing.time_interleaved(calls, "cpu", warmup=0, repeats=4)
    assert [len(t) for t in times.values()] == [4, 4]
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_time_interleaved_reports_a_raising_call_and_keeps_the_others():
    def boom():
        raise RuntimeError("kaput")
    calls = {"ok": (lambda: None, None), "bad": (boom, None)}
    times = bench_timing.time_interleaved(calls, "cpu", 1, 3)
    assert len(times["ok"]) == 3
    assert isinstance(times["bad"], RuntimeError)
    assert bench.short_error(times["bad"]) == "RuntimeError: kaput"


def test_summarize_median_and_iqr_and_noise():
    summary = bench_timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary["median_s"] == 3.0 and summary["iqr_s"] == 2.0
    assert bench_timing.is_noisy(summary)
    assert not bench_timing.is_noisy(bench_timing.summarize([1.0, 1.01, 1.02, 0.99, 1.0]))
    assert not bench_timing.is_noisy(bench_timing.summarize([1.0, 3.0]))  # too few to judge
    assert bench_timing.summarize([7.0])["iqr_s"] == 0.0


def test_default_grids():
    cpu = bench.default_grid("cpu")
    assert [(c.batch, c.steps, c.input_size, c.hidden_size) for c in cpu] == [
        (32, 100, 128, 256), (8, 200, 64, 128), (64, 50, 256, 512), (16, 64, 100, 128),
        (1, 300, 32, 64)]
    assert cpu[3].num_layers == 2 and cpu[3].bidirectional
    gpu = bench.default_grid("cuda")
    assert len(gpu) == 7 and all(c.input_size == c.hidden_size for c in gpu)
    shapes = {(c.batch, c.steps, c.hidden_size) for c in gpu}
    assert {(16, 1024, 768), (64, 100, 512)} <= shapes  # the anchors
    assert [(c.batch, c.hidden_size) for c in gpu if c.bidirectional] == [(16, 256)]
    assert len(bench.default_grid("cpu", quick=True, cells=("lstm", "gru"))) == 2 * len(
        bench.default_grid("cpu", quick=True))
    assert not any(c.packed for c in cpu + gpu)


def test_suite_grids_add_packed_cases_and_the_full_grid_spans_the_issue():
    quick = bench.grid("cpu", "quick", packed=True)
    assert [c.packed for c in quick] == [False, False, True]
    assert bench.grid("cuda", "default", packed=True)[-2:] == [
        bench.Case("lstm", 16, 1024, 768, 768, packed=True),
        bench.Case("lstm", 64, 100, 512, 512, packed=True)]
    full = bench.grid("cpu", "full", cells=("gru",))
    assert {c.batch for c in full} == {1, 8, 16, 64, 256}
    assert {c.hidden_size for c in full} == {128, 256, 512, 768, 1024}
    assert {(c.num_layers, c.bidirectional) for c in full} == {
        (1, False), (1, True), (2, False), (2, True)}
    assert len(full) == 5 * 5 * 2 * 4 + 2 and {c.cell for c in full} == {"gru"}
    with pytest.raises(ValueError, match="unknown grid size"):
        bench.grid("cpu", "huge")
