"""``fusedrnn forecast``: a :class:`fusedrnn.models.TimeSeriesRNN` on a classic series, against
the naive and seasonal-naive baselines.

Data (bundled with statsmodels, so offline): ``co2`` (Mauna Loa, monthly means of the weekly
record with gaps interpolated, 1958-2001, season 12) or ``sunspots`` (yearly sunspot
numbers 1700-2008, solar cycle ~11 years). The last ``--test-fraction`` of the series is the
test period. The model reads first differences (so a trend never leaves the training
range), standardised with the mean and deviation of the training period only, and predicts
the next difference; levels are rebuilt from the last observed value.

Every forecast reads the ``--window`` observed values before its origin. One-step: each test
point from the actual values before it. Multi-step: from every origin in the test period
with ``--horizon`` points ahead, the model's forecasts fed back recursively. Writes
``forecast.md`` (RMSE and MAE table) and ``forecast.png``.
"""

import random
import sys
import time

HELP = "forecast CO2 or sunspots with a stacked LSTM against naive baselines"
DATASETS = {"co2": 12, "sunspots": 11}  # name: season length

__all__ = ["HELP", "add_arguments", "run", "load_series", "forecast_levels", "baselines",
           "error_table"]


def add_arguments(parser):
    from ..cli_types import open_fraction, positive_float, positive_int, seed
    from .common import add_backend_argument, add_device_arguments

    parser.add_argument("--dataset", default="co2", choices=sorted(DATASETS))
    parser.add_argument("--test-fraction", type=open_fraction, default=0.2,
                        help="last share of the series held out for testing (default: 0.2)")
    parser.add_argument("--window", type=positive_int, default=48,
                        help="observed points each forecast reads (default: 48)")
    parser.add_argument("--horizon", type=positive_int, default=None,
                        help="multi-step horizon (default: the season length)")
    parser.add_argument("--hidden-size", type=positive_int, default=64)
    parser.add_argument("--num-layers", type=positive_int, default=2)
    parser.add_argument("--epochs", type=positive_int, default=60)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    add_backend_argument(parser)
    parser.add_argument("--seed", type=seed, default=0)
    add_device_arguments(parser)
    parser.add_argument("--out", default="runs/forecast",
                        help="folder for forecast.md and forecast.png (default: runs/forecast)")


def load_series(name):
    """The series as a float64 tensor ``(N,)`` and its season length."""
    import statsmodels.api as sm
    import torch

    if name == "co2":
        weekly = sm.datasets.co2.load_pandas().data["co2"]
        values = weekly.resample("MS").mean().interpolate().to_numpy()
    elif name == "sunspots":
        values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose among {sorted(DATASETS)}")
    return torch.tensor(values, dtype=torch.float64), DATASETS[name]


def _windows(scaled, window):
    """Training pairs ``(inputs (W, window, 1), targets (W, window, 1))``: targets are the
    inputs shifted by one step."""
    import torch

    starts = range(len(scaled) - window)
    inputs = torch.stack([scaled[s:s + window] for s in starts])
    targets = torch.stack([scaled[s + 1:s + window + 1] for s in starts])
    return inputs.unsqueeze(-1), targets.unsqueeze(-1)


def forecast_levels(model, levels, scale, origins, horizon, window):
    """Model forecasts ``(len(origins), horizon)`` of ``levels[o:o + horizon]`` for each origin
    ``o``, from the ``window`` differences observed before it. ``scale`` = (mean, std) of
    the training differences."""
    import torch

    mean, std = scale
    differences = (levels[1:] - levels[:-1] - mean) / std  # differences[i] = y[i+1] - y[i]
    contexts = torch.stack([differences[o - 1 - window:o - 1] for o in origins])
    weight = next(model.parameters())
    with torch.no_grad():
        steps = model.eval().forecast(contexts.unsqueeze(-1).to(weight), horizon)
    steps = steps.squeeze(-1).double().cpu() * std + mean
    last = torch.stack([levels[o - 1] for o in origins]).unsqueeze(1)
    return last + steps.cumsum(1)


def baselines(levels, origins, horizon, season):
    """``{"naive": ..., "seasonal naive": ...}`` forecasts shaped like :func:`forecast_levels`:
    the last observed value, and the value one season before each target."""
    import torch

    steps = torch.arange(horizon)
    naive = torch.stack([levels[o - 1].expand(horizon) for o in origins])
    seasonal = torch.stack([levels[o - season + steps % season] for o in origins])
    return {"naive": naive, "seasonal naive": seasonal}


def _truth(levels, origins, horizon):
    import torch

    return torch.stack([levels[o:o + horizon] for o in origins])


def error_table(forecasts, truth):
    """``{method: (RMSE, MAE)}`` over every forecast point."""
    return {name: (((f - truth) ** 2).mean().sqrt().item(), (f - truth).abs().mean().item())
            for name, f in forecasts.items()}


def _train(model, inputs, targets, args, device):
    import torch
    from torch import nn

    from . import common

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = list(range(len(inputs)))
    rng = random.Random(args.seed)
    bar = common.progress(range(1, args.epochs + 1), args.epochs, "epochs")
    for _ in bar:
        model.train()
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            predictions, _ = model(inputs[batch].to(device))
            loss = nn.functional.mse_loss(predictions, targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
        bar.set_postfix(loss=f"{total / len(order):.4f}", refresh=False)
    return total / len(order)


def run(args):
    """Train on the training period, forecast the test period, write the table and PNG."""
    from ..models import TimeSeriesRNN
    from ..cli import output_folder
    from . import common

    common.require("forecast", "statsmodels", "tqdm", "matplotlib")
    device = common.device_from_args(args)
    common.check_backend(args.backend, device)
    out = output_folder(args.out)
    common.seed_everything(args.seed)
    levels, season = load_series(args.dataset)
    horizon = args.horizon or season
    split = int(len(levels) * (1 - args.test_fraction))
    if split < args.window + season + 2 or len(levels) - split < horizon:
        raise common.usage_error(f"{args.dataset} has {len(levels)} points: too few for a test "
                                 f"fraction {args.test_fraction}, window {args.window} and "
                                 f"horizon {horizon}")
    train_differences = levels[1:split] - levels[:split - 1]
    scale = (train_differences.mean().item(), train_differences.std().item())
    inputs, targets = _windows(((train_differences - scale[0]) / scale[1]).float(), args.window)
    model = TimeSeriesRNN(1, args.hidden_size, args.num_layers, backend=args.backend).to(device)
    started = time.perf_counter()
    loss = _train(model, inputs, targets, args, device)
    print(f"trained {args.epochs} epochs on {len(inputs)} windows in "
          f"{time.perf_counter() - started:.1f} s, final loss {loss:.4f}", file=sys.stderr)

    results, shown = {}, {}
    for label, steps in (("one-step", 1), (f"{horizon}-step", horizon)):
        origins = list(range(split, len(levels) - steps + 1))
        forecasts = {"fusedrnn LSTM": forecast_levels(model, levels, scale, origins, steps,
                                                      args.window),
                     **baselines(levels, origins, steps, season)}
        results[label] = error_table(forecasts, _truth(levels, origins, steps))
        shown[label] = (origins, forecasts)
    rows = [[name] + [value for label in results for value in results[label][name]]
            for name in results["one-step"]]
    headers = ["method"] + [f"{label} {metric}" for label in results for metric in
                            ("RMSE", "MAE")]
    table = common.markdown_table(headers, rows)
    (out / "forecast.md").write_text(
        f"# {args.dataset}: forecasts of the last {len(levels) - split} points\n\n"
        f"Training points {split}, window {args.window}, horizon {horizon}, season {season}, "
        f"LSTM {args.num_layers}x{args.hidden_size}, {args.epochs} epochs, seed {args.seed}."
        f"\n\n{table}{common.provenance_markdown(device)}")
    _plot(levels, split, shown, horizon, out / "forecast.png", args.dataset)
    print(table, end="")
    print(f"wrote {out / 'forecast.md'} and {out / 'forecast.png'}")
    return 0


def _plot(levels, split, shown, horizon, path, title):
    from .common import saved_figure

    with saved_figure(path, size=(10, 4)) as (_, (axis,)):
        start = max(0, split - 3 * horizon)
        axis.plot(range(start, len(levels)), levels[start:].tolist(), color="black", lw=1,
                  label="observed")
        origins, forecasts = shown["one-step"]
        axis.plot(origins, forecasts["fusedrnn LSTM"][:, 0].tolist(), lw=1,
                  label="one-step LSTM")
        origins, forecasts = shown[f"{horizon}-step"]
        for index in range(0, len(origins), horizon):
            axis.plot(range(origins[index], origins[index] + horizon),
                      forecasts["fusedrnn LSTM"][index].tolist(), color="tab:red", lw=1.5,
                      label=f"{horizon}-step LSTM" if index == 0 else None)
        axis.axvline(split, color="grey", ls="--", lw=1)
        axis.set_xlabel("time step")
        axis.set_title(f"{title}: test period after the dashed line")
        axis.legend()
