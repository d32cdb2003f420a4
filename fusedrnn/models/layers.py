"""Building blocks shared by the models: recurrent layer factory, padding masks, final
states and additive attention.

Shapes: ``B`` batch, ``T`` time steps, ``L`` layers, ``D`` directions (2 if bidirectional
else 1), ``H`` hidden size.
"""

import torch
from torch import nn

from .. import modules

__all__ = ["CELLS", "Attention", "build_rnn", "padding_mask", "last_layer_states",
           "per_layer_states"]

CELLS = {"lstm": modules.LSTM, "gru": modules.GRU}


def build_rnn(cell, input_size, hidden_size, num_layers=1, bidirectional=False, dropout=0.0,
              backend="auto"):
    """A ``batch_first`` :class:`fusedrnn.LSTM` or :class:`fusedrnn.GRU`.

    ``cell`` is ``"lstm"`` or ``"gru"``; ``dropout`` (between layers) is used only when
    ``num_layers > 1``, where it has an effect.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0,
                       bidirectional=bidirectional, backend=backend)


def padding_mask(lengths, steps):
    """``(B, T)`` bool, True at real positions: ``mask[b, t] = t < lengths[b]``.

    ``lengths``: ``(B,)`` integer tensor (any device; the mask is made on its device).
    """
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def last_layer_states(h_n, num_layers, directions):
    """The top layer's final hidden states, directions concatenated.

    ``h_n``: ``(L*D, B, H)`` as returned by the recurrent modules. Returns ``(B, D*H)``
    (forward direction first, then backward).
    """
    batch, hidden = h_n.shape[1], h_n.shape[2]
    top = h_n.view(num_layers, directions, batch, hidden)[-1]
    return top.transpose(0, 1).reshape(batch, directions * hidden)


def per_layer_states(h_n, num_layers, directions):
    """Every layer's final hidden states with directions concatenated: ``(L, B, D*H)``."""
    batch, hidden = h_n.shape[1], h_n.shape[2]
    states = h_n.view(num_layers, directions, batch, hidden).permute(0, 2, 1, 3)
    return states.reshape(num_layers, batch, directions * hidden)


class Attention(nn.Module):
    """Additive (Bahdanau) attention of one query against a sequence of keys.

    ``score[b, t] = v . tanh(W_q query[b] + W_k keys[b, t] + bias)``; the weights are the
    softmax of the scores over the real positions, and the context is the weighted sum of
    the keys.

    Args:
        query_size: ``Q``, features of a query.
        key_size: ``K``, features of a key (an encoder output).
        attention_size: ``A``, width of the hidden scoring layer (default ``K``).

    Shapes in :meth:`forward`:
        query ``(B, Q)``; keys ``(B, T, K)``; mask ``(B, T)`` bool, True at real positions,
        at least one per row (``None``: all real); projected_keys ``(B, T, A)`` from
        :meth:`project_keys` with the same mask (optional, to reuse across decoder steps).
        Returns context ``(B, K)`` and weights ``(B, T)``; the weights are exactly 0 at
        masked positions, and masked keys reach neither the context nor any gradient,
        whatever their values (NaN or infinite ones included).
    """

    def __init__(self, query_size, key_size, attention_size=None):
        super().__init__()
        attention_size = attention_size or key_size
        self.query_projection = nn.Linear(query_size, attention_size, bias=False)
        self.key_projection = nn.Linear(key_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, keys, mask=None):
        """``keys`` ``(B, T, K)`` -> ``(B, T, A)``, the query-independent part of the scores;
        masked keys are zeroed first (a non-finite one would make NaN gradients)."""
        return self.key_projection(_masked(keys, mask))

    def forward(self, query, keys, mask=None, projected_keys=None):
        keys = _masked(keys, mask)
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        hidden = torch.tanh(projected_keys + self.query_projection(query).unsqueeze(1))
        scores = self.score(hidden).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        return context, weights


def _masked(keys, mask):
    """``keys`` ``(B, T, K)`` with zeros at the positions ``mask`` ``(B, T)`` leaves out."""
    return keys if mask is None else keys.masked_fill(~mask.unsqueeze(-1), 0.0)
