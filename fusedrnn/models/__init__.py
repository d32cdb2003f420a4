"""Classic recurrent models built on the fusedrnn modules.

- :class:`SentimentClassifier`: embedding, LSTM/GRU (optionally bidirectional), pooling by
  final states or attention, linear head.
- :class:`Attention`: additive attention with a padding mask.
- :class:`EncoderDecoder`: LSTM/GRU encoder and attention-fed decoder (teacher forcing,
  greedy decoding).
- :class:`TimeSeriesRNN`: stacked LSTM forecaster (one-step and recursive multi-step).

Every model takes ``backend=``, passed to its fusedrnn recurrent modules.
"""

from .classifier import SentimentClassifier
from .layers import CELLS, Attention, build_rnn, last_layer_states, padding_mask
from .seq2seq import EncoderDecoder
from .timeseries import TimeSeriesRNN

__all__ = ["SentimentClassifier", "Attention", "EncoderDecoder", "TimeSeriesRNN", "CELLS",
           "build_rnn", "padding_mask", "last_layer_states"]
