"""Forecasting: stacked LSTM with a linear head, one-step and recursive multi-step."""

import torch
from torch import nn

from .layers import build_rnn

__all__ = ["TimeSeriesRNN"]


class TimeSeriesRNN(nn.Module):
    """Stacked LSTM reading a series, with a linear head predicting its next value.

    Args:
        num_features: ``F``, values per time step (1 for a univariate series); the model
            predicts all of them, so its forecasts can be fed back in.
        hidden_size: ``H``.
        num_layers: ``L``.
        dropout: between LSTM layers.
        backend: passed to :class:`fusedrnn.LSTM`.

    Shapes:
        :meth:`forward`: series ``(B, T, F)``, optional state ``(h, c)`` each ``(L, B, H)``
        -> predictions ``(B, T, F)`` where ``predictions[:, t]`` estimates
        ``series[:, t + 1]``, and the final state.
        :meth:`forecast`: history ``(B, T, F)`` -> ``(B, steps, F)``, the next ``steps``
        values, each prediction fed back as the next input.
    """

    def __init__(self, num_features=1, hidden_size=64, num_layers=2, dropout=0.0,
                 backend="auto"):
        super().__init__()
        self.lstm = build_rnn("lstm", num_features, hidden_size, num_layers, False, dropout,
                              backend)
        self.head = nn.Linear(hidden_size, num_features)

    def forward(self, series, state=None):
        outputs, state = self.lstm(series, state)
        return self.head(outputs), state

    def forecast(self, history, steps):
        """Recursive multi-step forecast ``(B, steps, F)``; ``steps = 1`` is the one-step one."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        predictions, state = self(history)
        step = predictions[:, -1:]
        forecasts = [step]
        for _ in range(steps - 1):
            step, state = self(step, state)
            forecasts.append(step)
        return torch.cat(forecasts, dim=1)
