"""fusedrnn.models on tiny shapes: output shapes, padding that never leaks, one optimiser
step that lowers the loss, and the backend passthrough."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fusedrnn.models import (Attention, EncoderDecoder, SentimentClassifier, TimeSeriesRNN,
                             padding_mask)

VOCAB = 30


def tokens_and_lengths(batch=4, steps=7, vocab=VOCAB):
    lengths = torch.tensor([steps, 3, 5, 1][:batch])
    tokens = torch.randint(1, vocab, (batch, steps))
    return tokens.masked_fill(~padding_mask(lengths, steps), 0), lengths


def scramble_padding(tokens, lengths, vocab=VOCAB):
    """The same batch with random (non-padding) ids at every padded position."""
    garbage = torch.randint(1, vocab, tokens.shape)
    return torch.where(padding_mask(lengths, tokens.shape[1]), tokens, garbage)


def loss_drops(model, loss_fn):
    """One Adam step on a fixed batch lowers ``loss_fn(model)`` (dropout off)."""
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = loss_fn(model)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(model)
    return before.item(), after.item()


CLASSIFIER_CONFIGS = [
    dict(cell="lstm", bidirectional=True, attention=False),
    dict(cell="lstm", bidirectional=False, attention=True, num_layers=2),
    dict(cell="gru", bidirectional=True, attention=True),
    dict(cell="gru", bidirectional=False, attention=False, num_layers=2),
]


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS, ids=str)
def test_classifier_shapes_and_padding(config):
    # float64 and tight tolerances: with small random weights, leaked padding moves the
    # logits by only ~1e-5
    model = SentimentClassifier(VOCAB, embedding_dim=8, hidden_size=6, num_classes=3,
                                **config).double().eval()
    tokens, lengths = tokens_and_lengths()
    logits = model(tokens, lengths)
    assert logits.shape == (4, 3)
    features, weights = model.pool(tokens, lengths)
    directions = 2 if config["bidirectional"] else 1
    assert features.shape == (4, 6 * directions)
    if config["attention"]:
        assert weights.shape == (4, 7)
        assert torch.all(weights[~padding_mask(lengths, 7)] == 0)
        torch.testing.assert_close(weights.sum(1), torch.ones(4, dtype=torch.float64))
    else:
        assert weights is None
    exact = dict(rtol=1e-9, atol=1e-12)
    # garbage at padded positions, or a longer padded batch, changes nothing
    torch.testing.assert_close(model(scramble_padding(tokens, lengths), lengths), logits, **exact)
    longer = torch.cat([tokens, torch.randint(1, VOCAB, (4, 5))], dim=1)
    torch.testing.assert_close(model(longer, lengths), logits, **exact)
    # each row alone, unpadded, gives the same logits as in the batch
    for row in range(4):
        alone = model(tokens[row:row + 1, :lengths[row]], lengths[row:row + 1])
        torch.testing.assert_close(alone, logits[row:row + 1], **exact)


@pytest.mark.parametrize("config", CLASSIFIER_CONFIGS[:3], ids=str)
def test_classifier_step_lowers_loss(config):
    model = SentimentClassifier(VOCAB, embedding_dim=8, hidden_size=6, dropout=0.0, **config)
    tokens, lengths = tokens_and_lengths()
    labels = torch.tensor([0, 1, 1, 0])
    before, after = loss_drops(model, lambda m: nn.functional.cross_entropy(
        m(tokens, lengths), labels))
    assert after < before


def test_backend_passthrough():
    assert SentimentClassifier(VOCAB, 4, 4, backend="reference").rnn.backend == "reference"
    seq2seq = EncoderDecoder(VOCAB, VOCAB, 4, 4, backend="reference")
    assert seq2seq.encoder.backend == seq2seq.decoder.backend == "reference"
    assert TimeSeriesRNN(1, 4, backend="reference").lstm.backend == "reference"
    with pytest.raises(ValueError, match="cell must be one of"):
        SentimentClassifier(VOCAB, 4, 4, cell="rnn")


def test_attention_masks_padding():
    attention = Attention(query_size=3, key_size=5, attention_size=4)
    query, keys = torch.randn(2, 3), torch.randn(2, 6, 5)
    mask = padding_mask(torch.tensor([6, 2]), 6)
    context, weights = attention(query, keys, mask)
    assert context.shape == (2, 5) and weights.shape == (2, 6)
    assert torch.all(weights[1, 2:] == 0) and torch.all(weights[1, :2] > 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    poisoned = keys.clone()
    poisoned[1, 2:] = float("nan")
    context2, weights2 = attention(query, poisoned, mask)
    torch.testing.assert_close(context2, context)
    torch.testing.assert_close(weights2, weights)
    # the context is the weighted sum of the real keys
    torch.testing.assert_close(context[1], weights[1, :2] @ keys[1, :2])
    # without a mask, padded keys do count
    assert not torch.allclose(attention(query, keys)[0][1], context[1])


def test_masked_keys_reach_no_gradient_whatever_their_values():
    """Non-finite keys at masked positions: finite gradients, those of zeroed keys (they were
    projected before the mask and their NaN reached every parameter's gradient)."""
    attention = Attention(query_size=3, key_size=5, attention_size=4)
    query, keys = torch.randn(2, 3), torch.randn(2, 6, 5)
    mask = padding_mask(torch.tensor([6, 2]), 6)
    grads = []
    for value in (0.0, float("nan"), float("inf")):
        poisoned = keys.clone()
        poisoned[1, 2:] = value
        for projected in (None, attention.project_keys(poisoned, mask)):
            context, _ = attention(query, poisoned, mask, projected)
            grads.append(torch.autograd.grad(context.sum(), list(attention.parameters())))
    for got in grads[1:]:
        assert len(got) == len(grads[0])
        for a, b in zip(got, grads[0]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_decoder(cell):
    model = EncoderDecoder(VOCAB, VOCAB + 2, embedding_dim=6, hidden_size=5, cell=cell,
                           num_layers=2).double().eval()
    source, lengths = tokens_and_lengths()
    target_input = torch.randint(1, VOCAB + 2, (4, 3))
    logits = model(source, lengths, target_input)
    assert logits.shape == (4, 3, VOCAB + 2)
    torch.testing.assert_close(model(scramble_padding(source, lengths), lengths, target_input),
                               logits, rtol=1e-9, atol=1e-12)
    tokens, attention = model.generate(source, lengths, bos_id=1, eos_id=2, max_steps=4)
    steps = tokens.shape[1]
    assert 1 <= steps <= 4 and attention.shape == (4, steps, 7)
    assert torch.all(attention[~padding_mask(lengths, 7).unsqueeze(1).expand_as(attention)] == 0)
    # greedy decoding agrees with teacher forcing fed its own outputs
    fed = torch.cat([torch.ones(4, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    forced = model(source, lengths, fed).argmax(-1)
    unfinished = torch.ones_like(tokens, dtype=torch.bool)
    unfinished[:, 1:] = (tokens[:, :-1] != 2).cumprod(1).bool()
    assert torch.equal(forced[unfinished], tokens[unfinished])


def test_generate_decodes_in_eval_mode_and_needs_a_step():
    """Greedy decoding is the eval-mode model's (dropout between layers off), whatever mode
    the model is in, which it keeps; zero steps is an error naming the argument."""
    model = EncoderDecoder(VOCAB, VOCAB + 2, embedding_dim=6, hidden_size=5, cell="lstm",
                           num_layers=2, dropout=0.5).double()
    source, lengths = tokens_and_lengths()
    model.train()
    decoded = [model.generate(source, lengths, bos_id=1, eos_id=2, max_steps=4)[0]
               for _ in range(3)]
    assert model.training
    expected = model.eval().generate(source, lengths, bos_id=1, eos_id=2, max_steps=4)[0]
    assert all(torch.equal(tokens, expected) for tokens in decoded)
    with pytest.raises(ValueError, match="max_steps must be at least 1, got 0"):
        model.generate(source, lengths, bos_id=1, eos_id=2, max_steps=0)


def test_encoder_decoder_step_lowers_loss():
    model = EncoderDecoder(VOCAB, VOCAB, embedding_dim=6, hidden_size=5)
    source, lengths = tokens_and_lengths()
    target = torch.randint(1, VOCAB, (4, 4))
    target_input = torch.cat([torch.ones(4, 1, dtype=torch.long), target[:, :-1]], 1)
    before, after = loss_drops(model, lambda m: nn.functional.cross_entropy(
        m(source, lengths, target_input).flatten(0, 1), target.flatten()))
    assert after < before


def test_time_series_forecasts():
    model = TimeSeriesRNN(num_features=2, hidden_size=5, num_layers=2).eval()
    history = torch.randn(3, 8, 2)
    predictions, (h, c) = model(history)
    assert predictions.shape == (3, 8, 2) and h.shape == c.shape == (2, 3, 5)
    with torch.no_grad():
        forecast = model.forecast(history, 3)
    assert forecast.shape == (3, 3, 2)
    torch.testing.assert_close(forecast[:, 0], predictions[:, -1].detach())
    # each forecast step is the one-step prediction on the history extended by the previous
    extended = torch.cat([history, forecast[:, :2]], dim=1)
    torch.testing.assert_close(forecast[:, 2], model(extended)[0][:, -1].detach())
    with pytest.raises(ValueError, match="steps"):
        model.forecast(history, 0)


def test_time_series_step_lowers_loss():
    model = TimeSeriesRNN(num_features=1, hidden_size=6)
    series = torch.sin(torch.linspace(0, 6, 21)).view(1, 21, 1).repeat(2, 1, 1)
    before, after = loss_drops(model, lambda m: nn.functional.mse_loss(
        m(series[:, :-1])[0], series[:, 1:]))
    assert after < before


def test_the_models_tour_example_runs():
    """``examples/models_tour.py``, which examples/README.md points a new user to."""
    script = Path(__file__).resolve().parents[1] / "examples" / "models_tour.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for model in ("SentimentClassifier", "EncoderDecoder", "TimeSeriesRNN"):
        assert f"{model}: " in run.stdout, run.stdout
