"""Every model of fusedrnn.models on random data: shapes in, shapes out, one training step.

Run: .venv/bin/python examples/models_tour.py [--backend reference]
"""

import argparse

import torch
from torch import nn

from fusedrnn.models import EncoderDecoder, SentimentClassifier, TimeSeriesRNN


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    backend = parser.parse_args().backend
    torch.manual_seed(0)

    # text classification: a padded batch of token ids and each row's length
    tokens = torch.randint(1, 1000, (4, 12))
    lengths = torch.tensor([12, 9, 5, 2])
    classifier = SentimentClassifier(1000, 32, 16, attention=True, backend=backend)
    logits = classifier(tokens, lengths)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0]))
    loss.backward()
    print(f"SentimentClassifier: tokens {tuple(tokens.shape)} -> logits {tuple(logits.shape)}, "
          f"loss {loss.item():.3f}")

    # sequence to sequence: teacher forcing, then greedy decoding
    seq2seq = EncoderDecoder(20, 20, 16, 32, cell="gru", backend=backend)
    target_input = torch.randint(3, 20, (4, 6))
    print(f"EncoderDecoder: logits {tuple(seq2seq(tokens % 20, lengths, target_input).shape)}")
    generated, attention = seq2seq.generate(tokens % 20, lengths, bos_id=1, eos_id=2,
                                            max_steps=8)
    print(f"  greedy tokens {tuple(generated.shape)}, attention {tuple(attention.shape)}")

    # forecasting: one-step predictions for every position, and a recursive forecast
    series = torch.sin(torch.linspace(0, 12, 64)).view(1, 64, 1)
    forecaster = TimeSeriesRNN(1, 16, backend=backend)
    predictions, _ = forecaster(series)
    print(f"TimeSeriesRNN: series {tuple(series.shape)} -> predictions "
          f"{tuple(predictions.shape)}, 10-step forecast "
          f"{tuple(forecaster.forecast(series, 10).shape)}")


if __name__ == "__main__":
    main()
