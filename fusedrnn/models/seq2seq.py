"""Sequence to sequence: recurrent encoder, attention-fed recurrent decoder."""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layers import Attention, build_rnn, padding_mask, per_layer_states

__all__ = ["EncoderDecoder"]


class EncoderDecoder(nn.Module):
    """LSTM or GRU encoder and decoder with additive attention (Bahdanau et al., 2015).

    The encoder reads the source (packed, so padding never reaches it). The decoder starts
    from ``tanh(bridge(final encoder state))`` of each layer (LSTM cell states start at
    zero). At step ``t`` it attends over the encoder outputs with its previous top hidden
    state, feeds ``[embedding(y[t-1]); context]`` to its recurrent layers, and predicts
    ``y[t]`` from ``[h_t; context]``. Training uses teacher forcing (:meth:`forward`);
    inference decodes greedily (:meth:`generate`).

    Args:
        source_vocab_size: ``V_s``; target_vocab_size: ``V_t``.
        embedding_dim: ``E`` for source and target embeddings.
        hidden_size: ``H``, per encoder direction and of the decoder.
        cell: ``"lstm"`` or ``"gru"`` (both encoder and decoder).
        num_layers: ``L``, for encoder and decoder.
        bidirectional_encoder: ``D`` = 2 if True else 1; encoder outputs have ``K = D*H``.
        dropout: between recurrent layers.
        padding_idx: padding id of both vocabularies.
        backend: passed to the fusedrnn recurrent modules.

    Shapes:
        source ``(B, S)`` int64, source_lengths ``(B,)`` int64 in ``[1, S]``;
        target_input ``(B, T)`` int64 (the targets shifted right, starting with BOS).
        :meth:`forward` returns logits ``(B, T, V_t)``;
        :meth:`generate` returns tokens ``(B, N)`` and attention weights ``(B, N, S)``.
    """

    def __init__(self, source_vocab_size, target_vocab_size, embedding_dim=64, hidden_size=128,
                 cell="lstm", num_layers=1, bidirectional_encoder=True, dropout=0.0,
                 padding_idx=0, backend="auto"):
        super().__init__()
        self.cell = cell
        self.num_layers = num_layers
        self.directions = 2 if bidirectional_encoder else 1
        self.padding_idx = padding_idx
        key_size = self.directions * hidden_size
        self.source_embedding = nn.Embedding(source_vocab_size, embedding_dim,
                                             padding_idx=padding_idx)
        self.target_embedding = nn.Embedding(target_vocab_size, embedding_dim,
                                             padding_idx=padding_idx)
        self.encoder = build_rnn(cell, embedding_dim, hidden_size, num_layers,
                                 bidirectional_encoder, dropout, backend)
        self.bridge = nn.Linear(key_size, hidden_size)
        self.decoder = build_rnn(cell, embedding_dim + key_size, hidden_size, num_layers,
                                 False, dropout, backend)
        self.attention = Attention(hidden_size, key_size, hidden_size)
        self.output = nn.Linear(hidden_size + key_size, target_vocab_size)

    def encode(self, source, source_lengths):
        """Encoder outputs ``(B, S, K)``, mask ``(B, S)`` and the decoder's initial state."""
        packed = pack_padded_sequence(self.source_embedding(source), source_lengths.cpu(),
                                      batch_first=True, enforce_sorted=False)
        outputs, state = self.encoder(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.shape[1])
        h_n = state[0] if isinstance(state, tuple) else state
        h0 = torch.tanh(self.bridge(per_layer_states(h_n, self.num_layers, self.directions)))
        h0 = h0.contiguous()
        decoder_state = (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0
        mask = padding_mask(source_lengths.to(source.device), source.shape[1])
        return outputs, mask, decoder_state

    def _step(self, previous, state, keys, projected_keys, mask):
        """One decoder step: previous tokens ``(B,)`` -> logits ``(B, V_t)``, weights ``(B, S)``."""
        h = state[0] if isinstance(state, tuple) else state
        context, weights = self.attention(h[-1], keys, mask, projected_keys)
        step_input = torch.cat([self.target_embedding(previous), context], dim=-1).unsqueeze(1)
        output, state = self.decoder(step_input, state)
        logits = self.output(torch.cat([output.squeeze(1), context], dim=-1))
        return logits, weights, state

    def forward(self, source, source_lengths, target_input):
        keys, mask, state = self.encode(source, source_lengths)
        projected_keys = self.attention.project_keys(keys, mask)
        logits = []
        for t in range(target_input.shape[1]):
            step_logits, _, state = self._step(target_input[:, t], state, keys, projected_keys,
                                               mask)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def generate(self, source, source_lengths, bos_id, eos_id, max_steps):
        """Greedy decoding for at most ``max_steps`` (at least 1) steps, stopping when every
        row emitted EOS, in eval mode (no dropout; the module's mode is restored after).

        Returns tokens ``(B, N)`` with ``N <= max_steps`` (EOS included; after it,
        ``padding_idx``) and attention weights ``(B, N, S)``.
        """
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        training = self.training
        self.eval()
        try:
            return self._greedy(source, source_lengths, bos_id, eos_id, max_steps)
        finally:
            self.train(training)

    def _greedy(self, source, source_lengths, bos_id, eos_id, max_steps):
        keys, mask, state = self.encode(source, source_lengths)
        projected_keys = self.attention.project_keys(keys, mask)
        previous = torch.full((source.shape[0],), bos_id, dtype=torch.long, device=source.device)
        finished = torch.zeros_like(previous, dtype=torch.bool)
        tokens, attention = [], []
        for _ in range(max_steps):
            logits, weights, state = self._step(previous, state, keys, projected_keys, mask)
            previous = logits.argmax(-1).masked_fill(finished, self.padding_idx)
            tokens.append(previous)
            attention.append(weights)
            finished |= previous == eos_id
            if bool(finished.all()):
                break
        return torch.stack(tokens, dim=1), torch.stack(attention, dim=1)
