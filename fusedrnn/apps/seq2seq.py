"""``fusedrnn seq2seq``: a synthetic transduction task that needs attention, solved by
:class:`fusedrnn.models.EncoderDecoder`.

Tasks on random strings of ``--symbols`` symbols, ``--min-len`` to ``--max-len`` long:
``reverse`` (output the string backwards: the first output depends on the last input, so a
fixed-size summary of long inputs fails where attention succeeds) and ``sort``. Ids: 0 pad,
1 BOS, 2 EOS, then the symbols.

Training samples fresh strings every step, never one of the validation or held-out test
strings; every ``--eval-every`` steps the greedy exact-match accuracy on the validation set
is measured, and training stops early once it reaches ``--target``. The held-out test set is
scored once at the end. Writes ``seq2seq.md`` and ``attention.png`` (the attention weights
of one held-out example).
"""

import random
import sys
import time

HELP = "train an attention encoder-decoder on a synthetic transduction task"
PAD, BOS, EOS, FIRST_SYMBOL = 0, 1, 2, 3
TASKS = {"reverse": lambda s: s[::-1], "sort": sorted}

__all__ = ["HELP", "add_arguments", "run", "SequenceTask", "exact_match"]


def add_arguments(parser):
    from ..cli_types import fraction, positive_float, positive_int, seed
    from .common import add_backend_argument, add_device_arguments

    parser.add_argument("--task", default="reverse", choices=sorted(TASKS))
    parser.add_argument("--symbols", type=positive_int, default=10, help="alphabet size (default: 10)")
    parser.add_argument("--min-len", type=positive_int, default=4)
    parser.add_argument("--max-len", type=positive_int, default=16)
    parser.add_argument("--cell", default="lstm", choices=("lstm", "gru"))
    parser.add_argument("--embedding-dim", type=positive_int, default=32)
    parser.add_argument("--hidden-size", type=positive_int, default=64)
    parser.add_argument("--steps", type=positive_int, default=3000, help="most training steps")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument("--eval-every", type=positive_int, default=250)
    parser.add_argument("--eval-size", type=positive_int, default=1000,
                        help="validation and held-out test strings, each (default: 1000)")
    parser.add_argument("--target", type=fraction, default=0.995,
                        help="stop once validation exact match reaches this (default: 0.995)")
    add_backend_argument(parser)
    parser.add_argument("--seed", type=seed, default=0)
    add_device_arguments(parser)
    parser.add_argument("--out", default="runs/seq2seq",
                        help="folder for seq2seq.md and attention.png (default: runs/seq2seq)")


class SequenceTask:
    """Random strings and their transductions, as padded id tensors.

    ``sample(n, rng, exclude)`` draws ``n`` distinct strings not in ``exclude``;
    ``batch(strings)`` returns ``source (B, S)``, ``lengths (B,)``, ``target_input (B, T)``
    (BOS + output) and ``target (B, T)`` (output + EOS), padded with 0.
    """

    def __init__(self, task, symbols, min_len, max_len):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose among {sorted(TASKS)}")
        if not 1 <= min_len <= max_len or symbols < 2:
            raise ValueError("need 1 <= min_len <= max_len and at least 2 symbols")
        self.transduce = TASKS[task]
        self.symbols, self.min_len, self.max_len = symbols, min_len, max_len
        self.vocab_size = FIRST_SYMBOL + symbols

    @property
    def possible(self):
        """How many distinct strings there are."""
        return sum(self.symbols ** n for n in range(self.min_len, self.max_len + 1))

    def sample(self, count, rng, exclude=frozenset()):
        possible = self.possible
        if count > possible - len(exclude):
            raise ValueError(f"cannot draw {count} distinct strings: only {possible} exist "
                             f"and {len(exclude)} are excluded")
        strings = set()
        while len(strings) < count:
            length = rng.randint(self.min_len, self.max_len)
            string = tuple(rng.randrange(FIRST_SYMBOL, self.vocab_size) for _ in range(length))
            if string not in exclude:
                strings.add(string)
        return sorted(strings)

    def batch(self, strings):
        import torch

        from .text import pad_batch

        source, lengths = pad_batch(strings, PAD)
        outputs = [list(self.transduce(s)) for s in strings]
        target_input, _ = pad_batch([[BOS] + o for o in outputs], PAD)
        target, _ = pad_batch([o + [EOS] for o in outputs], PAD)
        return source, lengths, target_input, target.to(torch.long)


def exact_match(model, task, strings, device, batch_size=500):
    """Share of ``strings`` whose greedy decoding equals the expected output plus EOS."""
    correct = 0
    for start in range(0, len(strings), batch_size):
        chunk = strings[start:start + batch_size]
        source, lengths, _, target = task.batch(chunk)
        model.eval()
        tokens, _ = model.generate(source.to(device), lengths, BOS, EOS, task.max_len + 1)
        tokens = tokens.cpu()
        for row, string in enumerate(chunk):
            expected = list(task.transduce(string)) + [EOS]
            correct += tokens[row, :len(expected)].tolist() == expected
    return correct / len(strings)


def run(args):
    """Train until the validation target or ``--steps``, then score the held-out strings."""
    import torch
    from torch import nn

    from ..models import EncoderDecoder
    from ..cli import output_folder
    from . import common

    common.require("seq2seq", "tqdm", "matplotlib")
    device = common.device_from_args(args)
    common.check_backend(args.backend, device)
    out = output_folder(args.out)
    common.seed_everything(args.seed)
    try:
        task = SequenceTask(args.task, args.symbols, args.min_len, args.max_len)
    except ValueError as error:
        raise common.usage_error(f"--task {args.task}, --symbols {args.symbols}, --min-len "
                                 f"{args.min_len}, --max-len {args.max_len}: {error}") from None
    if 2 * args.eval_size + args.batch_size > task.possible:
        raise common.usage_error(
            f"--symbols {args.symbols}, --min-len {args.min_len} and --max-len {args.max_len} "
            f"make {task.possible} distinct strings: too few for two held-out sets of "
            f"--eval-size {args.eval_size} and training batches of --batch-size "
            f"{args.batch_size} drawn from the rest")
    rng = random.Random(args.seed)
    test = task.sample(args.eval_size, rng)
    validation = task.sample(args.eval_size, rng, exclude=set(test))
    held_out = set(test) | set(validation)
    model = EncoderDecoder(task.vocab_size, task.vocab_size, args.embedding_dim,
                           args.hidden_size, args.cell, padding_idx=PAD,
                           backend=args.backend).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    started, accuracy, history = time.perf_counter(), 0.0, []
    bar = common.progress(range(1, args.steps + 1), args.steps, f"{args.task}")
    for step in bar:
        model.train()
        source, lengths, target_input, target = task.batch(
            task.sample(args.batch_size, rng, held_out))
        logits = model(source.to(device), lengths, target_input.to(device))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.to(device).flatten(),
                                           ignore_index=PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", val_exact=f"{accuracy:.3f}",
                        refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = exact_match(model, task, validation, device)
            history.append((step, loss.item(), accuracy))
            if accuracy >= args.target:
                break
    bar.close()
    seconds = time.perf_counter() - started
    test_accuracy = exact_match(model, task, test, device)
    rows = [[s, round(l, 4), a] for s, l, a in history]
    (out / "seq2seq.md").write_text(
        f"# seq2seq {args.task}: {args.cell} encoder-decoder with attention\n\n"
        f"Strings of {args.min_len}-{args.max_len} over {args.symbols} symbols; held-out test "
        f"exact match **{test_accuracy:.4f}** on {len(test)} strings after {step} steps "
        f"({seconds:.0f} s).\n\n"
        + common.markdown_table(["step", "training loss", "validation exact match"], rows)
        + common.provenance_markdown(device))
    _plot_attention(model, task, test[-1], device, out / "attention.png")
    print(f"held-out exact match {test_accuracy:.4f} on {len(test)} strings after {step} steps "
          f"({seconds:.0f} s); wrote {out / 'seq2seq.md'} and {out / 'attention.png'}")
    if test_accuracy < args.target:
        print(f"warning: below the target {args.target}", file=sys.stderr)
    return 0


def _plot_attention(model, task, string, device, path):
    from .common import saved_figure

    source, lengths, _, _ = task.batch([string])
    tokens, weights = model.eval().generate(source.to(device), lengths, BOS, EOS,
                                            task.max_len + 1)
    labels = [str(t - FIRST_SYMBOL) if t >= FIRST_SYMBOL else "<eos>" for t in tokens[0].tolist()]
    with saved_figure(path, size=(6, 5)) as (figure, (axis,)):
        image = axis.imshow(weights[0].cpu().numpy(), cmap="viridis", aspect="auto")
        axis.set_xticks(range(len(string)), [str(t - FIRST_SYMBOL) for t in string])
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("source")
        axis.set_ylabel("generated")
        figure.colorbar(image, ax=axis)
