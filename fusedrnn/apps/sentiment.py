"""IMDB sentiment classification with :class:`fusedrnn.models.SentimentClassifier`: training
with validation carved out of the training split, checkpoints that reload alone,
evaluation and prediction. The command line is in :mod:`.sentiment_cli`.

A checkpoint (``weights_only``-loadable) holds ``kind``, ``version``, ``config`` (a
:class:`SentimentConfig` as a dict), ``encoder`` (the tokenizer JSON and truncation
settings), ``model`` (state dict), ``epoch``, ``history`` and ``best_val_accuracy``;
``last.pt`` adds ``optimizer``, ``scheduler`` and ``rng`` (torch's generator) to resume from.

Inside a process group (``torchrun --nproc_per_node=N fusedrnn sentiment train``, see
:mod:`.distributed`), :func:`train` wraps the model in ``DistributedDataParallel``: each rank
trains on its share of every epoch's length-bucketed batches (so one step sees ``N`` batches),
rank 0 alone validates, logs, shows progress and writes checkpoints and history, and its
validation accuracy is broadcast so that every rank takes the same decisions.
"""

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from ..models import SentimentClassifier
from . import common, distributed, imdb, text

__all__ = ["SentimentConfig", "KIND", "VERSION", "build_model", "prepare_data", "train",
           "resumed_config", "load_model", "predict_probabilities", "evaluate_split",
           "evaluate_reviews"]

KIND = "fusedrnn-sentiment"
VERSION = 1
BEST, LAST = "best.pt", "last.pt"


@dataclasses.dataclass
class SentimentConfig:
    """Everything that defines a run; the defaults are the benchmark configuration."""

    cell: str = "lstm"
    bidirectional: bool = True
    attention: bool = True
    backend: str = "auto"
    embedding_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.5
    embedding_dropout: float = 0.25
    tokenizer: str = "word"
    vocab_size: int = 20000
    max_len: int = 256
    truncation: str = "head+tail"
    batch_size: int = 64
    lr: float = 2e-3
    lr_decay: float = 0.8
    clip: float = 1.0
    epochs: int = 5
    val_fraction: float = 0.1
    limit: int = 0
    seed: int = 0

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sentiment config field(s): {', '.join(unknown)}")
        return cls(**values)


def build_model(config, vocab_size):
    return SentimentClassifier(
        vocab_size, config.embedding_dim, config.hidden_size, config.num_layers, config.cell,
        config.bidirectional, config.attention, config.dropout, config.embedding_dropout,
        num_classes=2, padding_idx=0, backend=config.backend)


def prepare_data(config, data=None, encoder=None):
    """Read IMDB train, hold out validation, train the tokenizer on the rest (unless an
    ``encoder`` is given) and encode both. Returns ``(encoder, train, validation)`` where
    each part is ``(id lists, labels)``."""
    reviews = imdb.load(data, splits=("train",))["train"]
    if config.limit:
        keep = sorted(torch.randperm(len(reviews), generator=torch.Generator().manual_seed(
            config.seed))[:config.limit].tolist())
        reviews = reviews.subset(keep)
    train_part, validation_part = imdb.split_validation(reviews, config.val_fraction,
                                                        config.seed)
    if not len(train_part):
        raise common.ConfigError(
            f"{len(reviews)} training reviews (--limit {config.limit}) leave none to train on "
            f"once validation (--val-fraction {config.val_fraction}, at least one review of "
            "each label) is held out")
    if encoder is None:
        tokenizer = text.train_tokenizer(train_part.texts, config.tokenizer, config.vocab_size)
        encoder = text.TextEncoder(tokenizer, config.max_len, config.truncation)
    return (encoder, (encoder.encode(train_part.texts), train_part.labels),
            (encoder.encode(validation_part.texts), validation_part.labels))


def _batch(ids, indices, device):
    """Padded tokens ``(B, T)`` on ``device`` and lengths ``(B,)`` (CPU) of ``ids[indices]``."""
    tokens, lengths = text.pad_batch([ids[i] for i in indices])
    return tokens.to(device), lengths


@torch.no_grad()
def predict_probabilities(model, ids, device, batch_size=128):
    """Positive-class probabilities for encoded texts, in their order (eval mode)."""
    model.eval()
    probabilities = torch.empty(len(ids))
    for indices in text.bucket_batches([len(s) for s in ids], batch_size, shuffle=False):
        tokens, lengths = _batch(ids, indices, device)
        probabilities[indices] = model.predict_proba(tokens, lengths)[:, 1].float().cpu()
    return probabilities


def _train_epoch(model, optimizer, config, ids, labels, epoch, device, show_progress,
                 network=None):
    """One epoch; ``network`` (default ``model``) is what runs forward, e.g. the
    ``DistributedDataParallel`` wrapper of ``model``, whose ranks each take their shard of
    the batches. Returns the mean training loss (over all ranks) and the seconds taken."""
    network = network or model
    network.train()
    batches = text.bucket_batches([len(s) for s in ids], config.batch_size, shuffle=True,
                                  seed=config.seed * 1000 + epoch)
    batches = distributed.shard(batches, distributed.rank(), distributed.world_size())
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = common.progress(batches, len(batches), f"epoch {epoch}/{config.epochs}",
                          show_progress)
    for indices in bar:
        tokens, lengths = _batch(ids, indices, device)
        targets = torch.tensor([labels[i] for i in indices], device=device)
        loss = nn.functional.cross_entropy(network(tokens, lengths), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        total_loss += loss.item() * len(indices)
        seen += len(indices)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}",
                        reviews_per_s=f"{seen / (time.perf_counter() - start):.0f}",
                        refresh=False)
    bar.close()
    if distributed.active():
        total_loss, seen = distributed.all_reduce_sum([total_loss, seen], device)
    return total_loss / seen, time.perf_counter() - start


def _validate(model, ids, labels, device):
    """``(loss, accuracy)`` on the validation set: computed by rank 0 alone in a process group
    and broadcast, so every rank keeps the same best checkpoint."""
    if not distributed.active():
        return _validate_here(model, ids, labels, device)
    result = _validate_here(model, ids, labels, device) if distributed.rank() == 0 else None
    return distributed.broadcast_object(result)


def _validate_here(model, ids, labels, device):
    probabilities = predict_probabilities(model, ids, device)
    targets = torch.tensor(labels, dtype=torch.float)
    loss = nn.functional.binary_cross_entropy(probabilities.clamp(1e-7, 1 - 1e-7), targets)
    accuracy = ((probabilities > 0.5).float() == targets).float().mean()
    return loss.item(), accuracy.item()


def train(config, out_dir, data=None, device=None, resume=False, show_progress=True,
          log=print):
    """Train, validating each epoch; ``out_dir/best.pt`` keeps the best validation accuracy,
    ``out_dir/last.pt`` the state to resume from (``resume=True`` continues it, with
    ``config.epochs`` as the new total). Returns the history (one dict per epoch).

    In an initialised process group the training is data parallel and only rank 0 logs,
    shows progress and writes files (module docstring); every rank returns the history."""
    out_dir = Path(out_dir)
    device = device or common.default_device()
    common.prepare_cpu(device)
    main_process = distributed.rank() == 0
    if not main_process:
        show_progress, log = False, _silent
    state = None
    if resume:
        state = common.load_checkpoint(out_dir / LAST, KIND, VERSION)
        epochs = config.epochs
        config = SentimentConfig.from_dict({**state["config"], "epochs": epochs})
        if state["epoch"] >= epochs:
            log(f"{out_dir / LAST} already has {state['epoch']} epochs; nothing to do")
            return state["history"]
    common.seed_everything(config.seed)
    started = time.perf_counter()
    environment = common.provenance(device) if main_process else None  # for history.json
    encoder = text.TextEncoder.from_state(state["encoder"]) if state else None
    if encoder is None and distributed.active():  # one tokenizer, trained by rank 0, for all
        if main_process:
            encoder = prepare_data(config, data)[0]
        encoder = text.TextEncoder.from_state(distributed.broadcast_object(
            encoder.to_state() if main_process else None))
    encoder, (train_ids, train_labels), (val_ids, val_labels) = prepare_data(config, data,
                                                                             encoder)
    log(f"data: {len(train_ids)} training and {len(val_ids)} validation reviews, vocabulary "
        f"{encoder.vocab_size}, prepared in {time.perf_counter() - started:.1f} s")
    model = build_model(config, encoder.vocab_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, config.lr_decay)
    history, best, first_epoch = [], -1.0, 1
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, best = state["history"], state["best_val_accuracy"]
        first_epoch = state["epoch"] + 1
        log(f"resuming {out_dir / LAST} after epoch {state['epoch']}")
    network = None
    if distributed.active():  # broadcasts rank 0's parameters to every rank
        network = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        log(f"data parallel over {distributed.world_size()} processes: each step takes "
            f"{distributed.world_size()} batches of {config.batch_size}")
    log(f"model: {sum(p.numel() for p in model.parameters())} parameters on {device}")
    for epoch in range(first_epoch, config.epochs + 1):
        train_loss, seconds = _train_epoch(model, optimizer, config, train_ids, train_labels,
                                           epoch, device, show_progress, network)
        scheduler.step()
        val_loss, val_accuracy = _validate(model, val_ids, val_labels, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_accuracy": val_accuracy, "seconds": seconds})
        improved = val_accuracy > best
        best = max(best, val_accuracy)
        log(f"epoch {epoch}: train loss {train_loss:.4f}, validation loss {val_loss:.4f}, "
            f"validation accuracy {val_accuracy:.4f}{' (best)' if improved else ''}, "
            f"{seconds:.0f} s ({len(train_ids) / seconds:.0f} reviews/s)")
        if not main_process:
            continue
        payload = {"kind": KIND, "version": VERSION, "config": dataclasses.asdict(config),
                   "encoder": encoder.to_state(), "model": model.state_dict(), "epoch": epoch,
                   "history": history, "best_val_accuracy": best}
        if improved:
            common.save_checkpoint(out_dir / BEST, payload)
        common.save_checkpoint(out_dir / LAST, {
            **payload, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state()})
        record = {"config": dataclasses.asdict(config), "history": history,
                  "environment": environment}
        (out_dir / "history.json").write_text(json.dumps(record, indent=1) + "\n")
    distributed.barrier()  # the checkpoints exist when any rank returns
    return history


def _silent(message):
    """The log of ranks other than 0."""


def resumed_config(path, epochs=None):
    """The configuration of the run whose ``last.pt`` is ``path``, to ``epochs`` in all if
    given, else to its own number."""
    payload = common.load_checkpoint(path, KIND, VERSION, map_location="cpu")
    try:
        config = SentimentConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise common.CheckpointError(f"checkpoint {path} holds no valid configuration: "
                                     f"{type(error).__name__}: {error}") from error
    return config if epochs is None else dataclasses.replace(config, epochs=epochs)


def load_model(path, device="cpu", backend=None):
    """``(model in eval mode, encoder, checkpoint dict)`` from a checkpoint file alone, on
    the fusedrnn ``backend`` given, else on the one it was trained with (a model trained on
    ``cuda`` or ``triton`` evaluates on the CPU with ``backend="auto"``).

    Raises :class:`~fusedrnn.apps.common.CheckpointError` for a missing, corrupt, foreign or
    mismatched checkpoint.
    """
    payload = common.load_checkpoint(path, KIND, VERSION, map_location=device)
    try:
        config = SentimentConfig.from_dict(payload["config"])
        if backend is not None:
            config = dataclasses.replace(config, backend=backend)
        encoder = text.TextEncoder.from_state(payload["encoder"])
        model = build_model(config, encoder.vocab_size).to(device)
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise common.CheckpointError(f"checkpoint {path} does not match this model: "
                                     f"{type(error).__name__}: {error}") from error
    return model.eval(), encoder, payload


def evaluate_split(path, data=None, split="test", device="cpu", log=print, backend=None):
    """Metrics (see :func:`~fusedrnn.apps.common.binary_metrics`) of a checkpoint on a split
    (``backend``: as for :func:`load_model`)."""
    device = torch.device(device)
    model, encoder, _ = load_model(path, device, backend)
    common.prepare_cpu(device)
    reviews = imdb.load(data, splits=(split,))[split]
    log(f"evaluating {path} on {len(reviews)} {split} reviews")
    return evaluate_reviews(model, encoder, reviews, device)


def evaluate_reviews(model, encoder, reviews, device="cpu"):
    """Metrics of ``model`` on :class:`~fusedrnn.apps.imdb.Reviews` (threshold 0.5)."""
    probabilities = predict_probabilities(model, encoder.encode(reviews.texts), device)
    return common.binary_metrics(reviews.labels, (probabilities > 0.5).long().tolist())
