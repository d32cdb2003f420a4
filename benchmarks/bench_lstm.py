"""LSTM: fusedrnn (every registered backend) against torch.nn.LSTM (cuDNN on CUDA, oneDNN on
the CPU), in every mode, over the grid chosen by --quick / (default) / --full; the cases,
modes, dtypes and providers are parametrized by conftest.py."""

CELL = "lstm"


def bench_lstm(benchmark, provider, mode, run_benchmark):
    run_benchmark(benchmark, provider, mode)
