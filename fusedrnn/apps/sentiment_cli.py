"""``fusedrnn sentiment train|evaluate|predict|compare``: IMDB sentiment on the command line.

The training options are generated from :class:`~fusedrnn.apps.sentiment.SentimentConfig`,
so every field of a run's configuration can be set (``--cell gru``, ``--no-bidirectional``,
``--attention``, ``--max-len 256`` ...) and nothing is declared twice.

``train`` also runs data parallel under ``torchrun --nproc_per_node=N`` (one process per CPU
group or GPU; see :mod:`.distributed` and :mod:`.sentiment`); rank 0 alone prints and writes.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..cli_types import (non_negative_float, non_negative_int, open_fraction, positive_float,
                         positive_int, probability, ranged, seed)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "IMDB sentiment classification: train, evaluate, predict, compare"

DEFAULT_OUT = "runs/sentiment"
OPTION_HELP = {
    "cell": "recurrent cell: lstm or gru",
    "bidirectional": "read reviews in both directions",
    "attention": "pool by additive attention over the outputs instead of the final states",
    "backend": "fusedrnn backend",
    "tokenizer": "word (word level) or bpe (subwords)",
    "vocab_size": "vocabulary cap, special tokens included",
    "max_len": "tokens kept per review",
    "truncation": "which tokens a long review keeps: head, tail or head+tail",
    "lr": "Adam learning rate",
    "lr_decay": "learning rate factor applied after each epoch",
    "clip": "gradient norm clipping (0: off)",
    "val_fraction": "share of the training split held out for validation",
    "limit": "use only this many training reviews (0: all), for quick runs",
}
CHOICES = {"cell": ("lstm", "gru"), "tokenizer": ("word", "bpe"),
           "truncation": ("head", "tail", "head+tail")}
# at least one word beside the two special tokens ([PAD], [UNK])
vocabulary_size = ranged("vocabulary_size", int, lambda v: v >= 3,
                         "at least 3 (two special tokens and a word)")
# The argparse type of each numeric option, where its field's type alone would let a bad
# value through.
NUMBER_TYPES = {"vocab_size": vocabulary_size, "embedding_dim": positive_int,
                "hidden_size": positive_int, "num_layers": positive_int,
                "dropout": probability, "embedding_dropout": probability,
                "max_len": positive_int, "batch_size": positive_int, "lr": positive_float,
                "lr_decay": positive_float, "clip": non_negative_float, "epochs": positive_int,
                "val_fraction": open_fraction, "limit": non_negative_int, "seed": seed}
COMPARED = [("lstm", False), ("lstm", True), ("gru", False), ("gru", True)]


def add_arguments(parser):
    """Add the four actions and their options to the ``sentiment`` subparser."""
    from .common import add_device_arguments

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a classifier on IMDB train (validation "
                               "held out), saving best.pt and last.pt in --out")
    _add_config_options(train)
    _add_common(train, out_help="folder for best.pt, last.pt and history.json")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last.pt, to its own number "
                            "of epochs or to --epochs")
    evaluate = actions.add_parser("evaluate", help="accuracy, precision/recall/F1 and the "
                                  "confusion matrix of a checkpoint on the test split")
    evaluate.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    evaluate.add_argument("--split", default="test", choices=("test", "train"))
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics here")
    _add_run_backend(evaluate)
    _add_common(evaluate)
    predict = actions.add_parser("predict", help="classify texts: JSON lines on stdout")
    predict.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--input", metavar="FILE", help="one text per line ('-': stdin)")
    _add_run_backend(predict)
    add_device_arguments(predict)
    compare = actions.add_parser("compare", help="LSTM vs GRU, with and without attention: "
                                 "markdown table and learning-curve PNG")
    _add_config_options(compare, skip=("cell", "attention"))
    _add_common(compare, out_help="folder for one run per model, compare.md and "
                                  "learning_curves.png")


def _add_config_options(parser, skip=()):
    from .sentiment import SentimentConfig

    for field in dataclasses.fields(SentimentConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{OPTION_HELP.get(field.name, field.name.replace('_', ' '))} " \
                    f"(default: {field.default})"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, type=_number_type(field), default=None,
                                choices=_choices(field.name), help=help_text)


def _number_type(field):
    return NUMBER_TYPES.get(field.name, type(field.default))


def _choices(name):
    if name == "backend":
        from .common import backend_choices

        return backend_choices()
    return CHOICES.get(name)


def _add_run_backend(parser):
    parser.add_argument("--backend", default="auto", choices=_choices("backend"),
                        help="fusedrnn backend to run the checkpoint on, whichever it was "
                             "trained on (default: auto)")


def _add_common(parser, out_help=None):
    from .common import add_device_arguments

    parser.add_argument("--data", help="IMDB .tar.gz or aclImdb folder (default: "
                        "$FUSEDRNN_DATA, else ../shared/data/aclImdb_v1_labeled.tar.gz, "
                        "else download)")
    add_device_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if out_help:
        parser.add_argument("--out", default=DEFAULT_OUT, help=f"{out_help} "
                            f"(default: {DEFAULT_OUT})")


def _given_options(args):
    """``{config field: value}`` for the configuration options given on the command line."""
    from .sentiment import SentimentConfig

    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SentimentConfig)}
    return {name: value for name, value in given.items() if value is not None}


def _config(args):
    from .sentiment import SentimentConfig

    return SentimentConfig(**_given_options(args))


def run(args):
    """Dispatch to the chosen action; returns the exit status."""
    action = {"train": _train, "evaluate": _evaluate, "predict": _predict,
              "compare": _compare}[args.action]
    from ..cli import output_folder
    from .common import CheckpointError, ConfigError, usage_error, usage_errors
    from .distributed import launched_world_size
    from .imdb import DataNotFoundError

    if args.action != "train" and launched_world_size() > 1:
        raise usage_error(f"only 'sentiment train' runs under torchrun with several "
                          f"processes, not 'sentiment {args.action}'")

    _require_packages(args)
    if args.action in ("train", "compare"):
        output_folder(args.out)
    if args.action == "evaluate" and args.json is not None:
        if not args.json.strip():
            raise usage_error("--json: an empty path")
        json_path = Path(args.json)
        output_folder(json_path.parent, "--json")
        if json_path.is_dir():
            raise usage_error(f"--json {args.json}: a folder, where the metrics go to a file")
    with usage_errors(CheckpointError, DataNotFoundError, ConfigError):
        return action(args)


def _require_packages(args):
    from .common import require

    progress = args.action in ("train", "compare") and not args.no_progress
    require(f"sentiment {args.action}", "tokenizers", *(["tqdm"] if progress else []),
            *(["matplotlib"] if args.action == "compare" else []))


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _train(args):
    from . import common, distributed, sentiment

    changed = sorted(set(_given_options(args)) - {"epochs"})
    if args.resume and changed:
        raise common.usage_error(f"--resume continues the run in {args.out} with its own "
                                 f"configuration; only --epochs may be given, not "
                                 f"{', '.join('--' + name.replace('_', '-') for name in changed)}")
    if args.resume:
        config = sentiment.resumed_config(Path(args.out) / sentiment.LAST, args.epochs)
    else:
        config = _config(args)
    with distributed.launch(common.device_from_args(args)) as device:
        common.check_backend(config.backend, device)
        history = sentiment.train(config, args.out, args.data, device, args.resume,
                                  not args.no_progress, _log)
    if not distributed.is_main_process():
        return 0
    best = max(history, key=lambda row: row["val_accuracy"])
    print(f"best validation accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']}; "
          f"checkpoint {Path(args.out) / sentiment.BEST}")
    return 0


def _evaluate(args):
    from . import common, sentiment

    device = common.device_from_args(args)
    common.check_backend(args.backend, device)
    metrics = sentiment.evaluate_split(args.checkpoint, args.data, args.split, device, _log,
                                       args.backend)
    (tn, fp), (fn, tp) = metrics["confusion"]
    print(f"{args.split} reviews: {metrics['count']}\n"
          f"accuracy:  {metrics['accuracy']:.4f}\nprecision: {metrics['precision']:.4f}\n"
          f"recall:    {metrics['recall']:.4f}\nF1:        {metrics['f1']:.4f}\n"
          f"confusion matrix (rows: true, columns: predicted)\n"
          f"            negative  positive\n"
          f"  negative  {tn:8d}  {fp:8d}\n  positive  {fn:8d}  {tp:8d}")
    if args.json is not None:
        record = {**metrics, "split": args.split, "checkpoint": str(args.checkpoint),
                  "environment": common.provenance(device)}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _predict(args):
    from . import common, imdb, sentiment

    texts = list(args.texts)
    if args.input == "-":
        texts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
    elif args.input:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise common.usage_error(f"cannot read --input: {error}") from error
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise common.usage_error("give texts to classify as arguments or with --input FILE")
    device = common.device_from_args(args)
    common.check_backend(args.backend, device)
    model, encoder, _ = sentiment.load_model(args.checkpoint, device, args.backend)
    probabilities = sentiment.predict_probabilities(model, encoder.encode(texts), device)
    for text_, positive in zip(texts, probabilities.tolist()):
        print(json.dumps({"text": text_, "label": imdb.LABELS[int(positive > 0.5)],
                          "positive_probability": round(positive, 6)}))
    return 0


def _compare(args):
    from . import common, imdb, sentiment

    device, out = common.device_from_args(args), Path(args.out)
    base = _config(args)
    common.check_backend(base.backend, device)
    test = imdb.load(args.data, splits=("test",))["test"]
    rows, curves = [], {}
    for cell, attention in COMPARED:
        name = cell + ("+attention" if attention else "")
        _log(f"== {name}")
        run_dir = out / name.replace("+", "-")
        history = sentiment.train(dataclasses.replace(base, cell=cell, attention=attention),
                                  run_dir, args.data, device, False, not args.no_progress, _log)
        model, encoder, _ = sentiment.load_model(run_dir / sentiment.BEST, device)
        started = time.perf_counter()
        metrics = sentiment.evaluate_reviews(model, encoder, test, device)
        rows.append([name, metrics["accuracy"], max(h["val_accuracy"] for h in history),
                     sum(p.numel() for p in model.parameters()),
                     sum(h["seconds"] for h in history) / len(history),
                     time.perf_counter() - started])
        curves[name] = {key: [h[key] for h in history]
                        for key in ("train_loss", "val_loss", "val_accuracy")}
    table = common.markdown_table(["model", "test accuracy", "best validation accuracy",
                                   "parameters", "seconds per epoch", "test seconds"], rows)
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(base).items()
                         if k not in ("cell", "attention"))
    (out / "compare.md").write_text(f"# IMDB sentiment: LSTM vs GRU, with and without attention"
                                    f"\n\nSettings: {settings}; device {device}.\n\n{table}"
                                    f"{common.provenance_markdown(device)}")
    common.plot_curves(curves, out / "learning_curves.png", "IMDB sentiment",
                       [("train_loss", "training loss"), ("val_loss", "validation loss"),
                        ("val_accuracy", "validation accuracy")])
    print(table, end="")
    print(f"wrote {out / 'compare.md'} and {out / 'learning_curves.png'}")
    return 0
