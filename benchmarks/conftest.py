"""pytest-benchmark suites of fusedrnn against torch.nn (cuDNN on CUDA).

Run ``pytest benchmarks/ --benchmark-only`` (add ``--quick`` for tiny shapes in seconds, or
``--full`` for the whole grid; ``--benchmark-json FILE`` to keep the numbers). A suite file
``bench_<cell>.py`` sets ``CELL`` and defines one function; this file parametrizes it with

* ``case``: :func:`fusedrnn.bench.grid` of the chosen size for the device, padded input
  plus packed-input (``PackedSequence`` of random lengths, given to both providers) copies;
* ``dtype``: float32, or on CUDA with ``--full`` bfloat16, float16 and float32;
* ``mode``: :data:`fusedrnn.bench.MODES` (inference forward, training forward, backward
  only with the forward outside the timing, forward + backward);
* ``provider_name``: ``torch.nn`` and every backend registered in ``fusedrnn.backends``.
  A backend that cannot run here is skipped with its reason.

The device is CUDA when ``torch.cuda.is_available()``, else the CPU, decided at collection
(nothing here queries a device at import). Timing: pytest-benchmark's pedantic mode, one
call per round; before each round, outside the timing, the mode's setup runs, the L2 cache
is flushed and the device synchronised (CUDA), and the timed target synchronises after the
call on CUDA (:func:`fusedrnn.bench_timing.for_external_timer`). Each benchmark's
``extra_info`` holds the case, GEMM FLOPs, TFLOP/s of the median, the per-step floor and
peak memory; the JSON gets ``environment`` from
:func:`fusedrnn.bench_environment.environment`.
"""

from dataclasses import asdict

import pytest
import torch

from fusedrnn import backends, bench, bench_checks, bench_environment, bench_report, bench_timing

# grid size: (warm-up rounds, timed rounds) per benchmark
ROUNDS = {"quick": (2, 3), "default": (2, 10), "full": (3, 20)}


def pytest_addoption(parser):
    group = parser.getgroup("fusedrnn", "fusedrnn benchmark grid")
    group.addoption("--quick", action="store_true", help="tiny shapes: a smoke run in seconds")
    group.addoption("--full", action="store_true",
                    help="the full grid: batch x hidden x time x layers x directions, and on "
                         "CUDA bfloat16, float16 and float32 (hours)")


def pytest_configure(config):
    if config.getoption("--quick") and config.getoption("--full"):
        raise pytest.UsageError("--quick and --full exclude each other")


def grid_size(config):
    """``quick``, ``default`` or ``full``, from the command line."""
    if config.getoption("--quick"):
        return "quick"
    return "full" if config.getoption("--full") else "default"


def suite_device():
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def suite_dtypes(device, size):
    """The dtypes timed: all three on CUDA with ``--full``, else float32."""
    if device.type == "cuda" and size == "full":
        return ("bfloat16", "float16", "float32")
    return ("float32",)


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    size, device = grid_size(metafunc.config), suite_device()
    cases = bench.grid(device, size, cells=(metafunc.module.CELL,), packed=True)
    metafunc.parametrize("case", [asdict(case) for case in cases], indirect=True,
                         ids=[case.shape.replace(" ", "-") for case in cases])
    metafunc.parametrize("dtype", suite_dtypes(device, size))
    metafunc.parametrize("mode", bench.MODES)
    metafunc.parametrize("provider_name", [bench.TORCH_LABEL] + backends.names())


@pytest.fixture
def case(request):
    """The :class:`fusedrnn.bench.Case`, parametrized as a dict so the JSON keeps its fields."""
    return bench.Case(**request.param)


@pytest.fixture(scope="session")
def device():
    return suite_device()


@pytest.fixture
def provider(case, dtype, provider_name, device):
    """The provider under test, from :func:`fusedrnn.bench.build_providers`: every provider
    of a case gets the same weights and input (same seed). A backend that cannot run here
    skips the benchmark with its reason; one that fails to build, or whose outputs are not
    torch.nn's (:func:`fusedrnn.bench_checks.check_against_torch`), fails it."""
    torch_nn = provider_name == bench.TORCH_LABEL
    built = bench.build_providers(case, [] if torch_nn else [provider_name], device,
                                  bench.DTYPES[dtype])
    bench_checks.check_against_torch(built, bench.DTYPES[dtype])
    built = built[-1]
    if built.status == "unavailable":
        pytest.skip(f"{built.label} unavailable: {built.message}")
    if built.status != "ok":
        pytest.fail(f"{built.label}: {built.message}", pytrace=False)
    return built


@pytest.fixture
def run_benchmark(request, case, dtype, device):
    """``run(benchmark, provider, mode)``: time the provider's call in pedantic mode and
    record the case, FLOPs, TFLOP/s, floor and peak memory in ``benchmark.extra_info``."""
    warmup_rounds, rounds = ROUNDS[grid_size(request.config)]

    def run(benchmark, provider, mode):
        call, setup = bench.make_call(provider, mode)
        target, prepare = bench_timing.for_external_timer(call, setup, device)
        benchmark.group = f"{case.label} {mode} {dtype}"
        benchmark.pedantic(target, setup=prepare, rounds=rounds, warmup_rounds=warmup_rounds,
                           iterations=1)
        flops = bench.gemm_flops(case, mode, bench.input_tokens(provider.input))
        info = {"case": case.label, "cell": case.cell, "shape": case.shape, "mode": mode,
                "dtype": dtype, "device": str(device), "provider": provider.label,
                "backend": provider.backend, "resolved_backend": provider.resolved,
                "steps": case.steps, "flops": flops,
                "floor_us_per_step": bench.step_floor_seconds(
                    case, mode, flops, device, bench.DTYPES[dtype]) * 1e6,
                "peak_memory_bytes": bench_timing.peak_memory_bytes(call, setup, device)}
        if benchmark.stats is not None:  # None under --benchmark-disable
            median = benchmark.stats.stats.median
            info.update(us_per_step=median / case.steps * 1e6, tflops=flops / median / 1e12)
        benchmark.extra_info.update(info)
    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Attach the environment (versions, device, machine, git commit) and the grid settings."""
    size = grid_size(config)
    output_json["environment"] = bench_environment.environment(suite_device())
    output_json["suite"] = {"grid": size, "warmup_rounds": ROUNDS[size][0],
                            "rounds": ROUNDS[size][1],
                            "notes": [bench_report.FLOPS_NOTE, bench_report.FLOOR_NOTE,
                                      bench_report.MEMORY_NOTE]}
