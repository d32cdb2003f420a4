"""Text classification: embedding, recurrent encoder, pooling, linear head."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layers import Attention, build_rnn, last_layer_states, padding_mask

__all__ = ["SentimentClassifier"]


class SentimentClassifier(nn.Module):
    """Embedding -> multi-layer LSTM or GRU -> pooling -> dropout -> linear.

    Batches of different lengths go through the recurrent layers as a ``PackedSequence``, so
    padding never reaches them: the final states are those of each sequence's last real
    token (and, backwards, of its first), and the attention pooling masks padded steps.

    Args:
        vocab_size: number of token ids ``V``.
        embedding_dim: ``E``.
        hidden_size: ``H`` per direction.
        num_layers: stacked recurrent layers ``L``.
        cell: ``"lstm"`` or ``"gru"``.
        bidirectional: run a backward direction too (``D`` = 2, else 1).
        attention: pool by additive attention over the top layer's outputs, queried by the
            final states; otherwise pool by the final states themselves.
        dropout: dropout on the pooled features (and between recurrent layers).
        embedding_dropout: dropout on the embedded tokens.
        num_classes: ``C``.
        padding_idx: the padding token id (its embedding is zero and gets no gradient).
        backend: passed to the fusedrnn recurrent module (``"auto"``, ``"reference"``, ...).

    Shapes in :meth:`forward`:
        tokens ``(B, T)`` int64, padded on the right with any id; lengths ``(B,)`` int64 in
        ``[1, T]`` (any device). Returns logits ``(B, C)``. :meth:`pool` returns the pooled
        features ``(B, D*H)`` and the attention weights ``(B, T)`` (``None`` without
        attention).
    """

    def __init__(self, vocab_size, embedding_dim=128, hidden_size=128, num_layers=1,
                 cell="lstm", bidirectional=True, attention=False, dropout=0.5,
                 embedding_dropout=0.0, num_classes=2, padding_idx=0, backend="auto"):
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.rnn = build_rnn(cell, embedding_dim, hidden_size, num_layers, bidirectional,
                             dropout, backend)
        features = self.directions * hidden_size
        self.attention = Attention(features, features) if attention else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, num_classes)

    def pool(self, tokens, lengths):
        """Pooled features ``(B, D*H)`` and attention weights ``(B, T)`` or ``None``."""
        embedded = self.embedding_dropout(self.embedding(tokens))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        outputs, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state
        final = last_layer_states(h_n, self.num_layers, self.directions)
        if self.attention is None:
            return final, None
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=tokens.shape[1])
        mask = padding_mask(lengths.to(tokens.device), tokens.shape[1])
        return self.attention(final, outputs, mask)

    def forward(self, tokens, lengths):
        features, _ = self.pool(tokens, lengths)
        return self.classifier(self.dropout(features))

    @torch.no_grad()
    def predict_proba(self, tokens, lengths):
        """Class probabilities ``(B, C)`` in eval mode (the module's mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(tokens, lengths), dim=-1)
        finally:
            self.train(was_training)
