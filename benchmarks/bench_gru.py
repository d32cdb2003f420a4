"""GRU: fusedrnn (every registered backend) against torch.nn.GRU (cuDNN on CUDA), in every
mode, over the grid chosen by --quick / (default) / --full; the cases, modes, dtypes and
providers are parametrized by conftest.py."""

CELL = "gru"


def bench_gru(benchmark, provider, mode, run_benchmark):
    run_benchmark(benchmark, provider, mode)
