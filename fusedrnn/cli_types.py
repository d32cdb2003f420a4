"""The argparse types of fusedrnn's commands: each parses an option's text and refuses a value
out of its range with "must be ..., got ..." (argparse prefixes the option's name). Apart
from ``fusedrnn.cli`` so that the apps' parsers, which ``cli`` imports, can use them too."""

import argparse
import math


def ranged(name, parse, accepts, requirement):
    """An argparse type: ``parse`` the text, then refuse a value ``accepts`` does not, with
    "must be {requirement}, got {value}" (argparse prefixes the option)."""
    def convert(text):
        value = parse(text)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value

    convert.__name__ = name  # argparse's word for a text that does not parse
    return convert


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


positive_int = ranged("positive_int", int, lambda v: v >= 1, "at least 1")
non_negative_int = ranged("non_negative_int", int, lambda v: v >= 0, "at least 0")
# torch.manual_seed takes [-2**63, 2**64); the commands add small offsets (seed + 1).
seed = ranged("seed", int, lambda v: -2 ** 63 <= v < 2 ** 63, "in [-2**63, 2**63)")
positive_float = ranged("positive_float", _finite, lambda v: v > 0, "above 0")
non_negative_float = ranged("non_negative_float", _finite, lambda v: v >= 0, "at least 0")
probability = ranged("probability", _finite, lambda v: 0 <= v < 1, "in [0, 1)")  # dropout
# a share of something split in two, each part non-empty
open_fraction = ranged("open_fraction", _finite, lambda v: 0 < v < 1, "in (0, 1)")
fraction = ranged("fraction", _finite, lambda v: 0 <= v <= 1, "in [0, 1]")  # a target
