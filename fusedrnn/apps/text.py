"""Text pipeline: a Hugging Face ``tokenizers`` tokenizer trained on the training texts,
truncation, and length-bucketed padded batches.

Cleaning (HTML line breaks ``<br />`` to spaces, Unicode NFD, accents stripped, lower case) is
part of the tokenizer's normaliser, so a saved tokenizer cleans new text the same way.
"""

import random

import torch

__all__ = ["TRUNCATIONS", "PAD", "UNK", "train_tokenizer", "TextEncoder", "bucket_batches",
           "pad_batch"]

TRUNCATIONS = ("head", "tail", "head+tail")
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1
HEAD_SHARE = 0.25  # head+tail keeps the first quarter and the last three quarters


def train_tokenizer(texts, kind="word", vocab_size=20000, min_frequency=2):
    """A ``tokenizers.Tokenizer`` trained on ``texts``, ``[PAD]`` = 0, ``[UNK]`` = 1.

    ``kind``: ``"word"`` (word level: words and punctuation runs, rare words to ``[UNK]``)
    or ``"bpe"`` (byte-pair subwords). ``vocab_size`` caps the vocabulary, special tokens
    included; a word-level token must appear ``min_frequency`` times to be kept.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import trainers

    specials = [PAD, UNK]
    if kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=False)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=specials, show_progress=False)
        tokenizer.decoder = decoders.BPEDecoder()
    else:
        raise ValueError(f"tokenizer kind must be 'word' or 'bpe', got {kind!r}")
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFD(),
        normalizers.StripAccents(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def truncate(ids, max_len, strategy):
    """At most ``max_len`` of ``ids``: the first (``head``), the last (``tail``), or the first
    quarter and last three quarters (``head+tail``, after Sun et al., 2019)."""
    if len(ids) <= max_len:
        return ids
    if strategy == "head":
        return ids[:max_len]
    if strategy == "tail":
        return ids[len(ids) - max_len:]
    if strategy == "head+tail":
        head = int(max_len * HEAD_SHARE)
        return ids[:head] + ids[len(ids) - (max_len - head):]
    raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {strategy!r}")


class TextEncoder:
    """Texts to truncated token-id lists with a trained tokenizer.

    ``to_state()`` / ``from_state()`` round-trip it through plain strings and numbers (what a
    ``weights_only`` checkpoint may hold).
    """

    def __init__(self, tokenizer, max_len=256, truncation="head+tail"):
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.truncation = truncation
        self.pad_id = tokenizer.token_to_id(PAD)
        if self.pad_id != 0 or tokenizer.token_to_id(UNK) != 1:
            raise ValueError(f"the tokenizer must map {PAD} to 0 and {UNK} to 1")

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def encode(self, texts):
        """A list of id lists, each non-empty (an empty text becomes ``[UNK]``)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        return [truncate(e.ids, self.max_len, self.truncation) or [1] for e in encodings]

    def to_state(self):
        return {"tokenizer": self.tokenizer.to_str(), "max_len": self.max_len,
                "truncation": self.truncation}

    @classmethod
    def from_state(cls, state):
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(state["tokenizer"])
        except Exception as error:  # tokenizers raises a bare Exception for bad JSON
            raise ValueError(f"invalid tokenizer JSON: {error}") from error
        return cls(tokenizer, state["max_len"], state["truncation"])


def bucket_batches(lengths, batch_size, shuffle=True, seed=0, pool_batches=50):
    """Index lists of batches with similar lengths, so little padding is computed.

    With ``shuffle``: a seeded shuffle, then pools of ``pool_batches`` batches sorted by
    length and cut into batches, then the batches shuffled. Without: sorted by length
    (longest first). Every index appears exactly once.
    """
    indices = list(range(len(lengths)))
    if not shuffle:
        indices.sort(key=lambda i: -lengths[i])
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(indices)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(indices), pool):
        chunk = sorted(indices[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_batch(sequences, pad_id=0):
    """``(tokens (B, T) int64 padded on the right with pad_id, lengths (B,) int64)``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return tokens, lengths
