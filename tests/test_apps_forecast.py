"""fusedrnn forecast: data, baselines, level reconstruction and the CLI on a tiny run."""

import contextlib
import io

import pytest
import torch

for _package in ("statsmodels", "tqdm", "matplotlib"):
    pytest.importorskip(_package)

from fusedrnn.apps import forecast  # noqa: E402
from fusedrnn.cli import main  # noqa: E402
from fusedrnn.models import TimeSeriesRNN  # noqa: E402


def test_series_are_bundled_and_complete():
    co2, season = forecast.load_series("co2")
    assert season == 12 and len(co2) == 526 and not torch.isnan(co2).any()
    sunspots, season = forecast.load_series("sunspots")
    assert season == 11 and len(sunspots) == 309


def test_baselines():
    levels = torch.arange(30, dtype=torch.float64)
    result = forecast.baselines(levels, [20, 25], horizon=3, season=4)
    assert result["naive"].tolist() == [[19, 19, 19], [24, 24, 24]]
    assert result["seasonal naive"].tolist() == [[16, 17, 18], [21, 22, 23]]
    truth = torch.tensor([[20.0, 21, 22]], dtype=torch.float64)
    errors = forecast.error_table({"naive": result["naive"][:1]}, truth)
    rmse, mae = errors["naive"]
    assert rmse == pytest.approx((14 / 3) ** 0.5) and mae == pytest.approx(2.0)


def test_forecast_levels_rebuilds_levels_from_differences():
    model = TimeSeriesRNN(1, 4, 1)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)  # predicts the mean difference at every step
    levels = torch.arange(40, dtype=torch.float64) ** 1.5
    result = forecast.forecast_levels(model, levels, (0.5, 2.0), [30, 35], horizon=3, window=6)
    expected = torch.stack([levels[29] + 0.5 * torch.arange(1, 4),
                            levels[34] + 0.5 * torch.arange(1, 4)])
    torch.testing.assert_close(result, expected.to(result.dtype))


def test_forecast_cli(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["forecast", "--dataset", "sunspots", "--epochs", "2", "--hidden-size", "4",
                       "--num-layers", "1", "--window", "12", "--horizon", "5", "--out",
                       str(tmp_path), "--threads", "1"])
    assert status == 0
    table = (tmp_path / "forecast.md").read_text()
    for row in ("| fusedrnn LSTM |", "| naive |", "| seasonal naive |"):
        assert row in table and row in out.getvalue()
    assert "5-step RMSE" in table and "one-step MAE" in table
    assert (tmp_path / "forecast.png").read_bytes()[:4] == b"\x89PNG"


def test_forecast_cli_rejects_impossible_split(tmp_path):
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["forecast", "--dataset", "sunspots", "--window", "400", "--out", str(tmp_path)])
    assert raised.value.code == 2 and "too few" in err.getvalue()
