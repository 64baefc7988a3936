"""Bounded numbers on a command line: the hyperparameters' parser and the tuner's share it."""

from __future__ import annotations

import argparse
import math


def number(kind: type, low=None, high=None, low_open: bool = False, high_open: bool = False):
    """An argparse ``type``: ``kind`` (int or float) within the bounds, else a one-line error
    that says what was expected (``'0' is not a number > 0``). ``"3.0"`` passes as the int 3."""

    def parse(text: str):
        try:
            value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {describe(kind, low, high, low_open, high_open)}"
            ) from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe(kind, low, high, low_open, high_open)}")
        return value

    return parse


def describe(kind: type, low, high, low_open: bool, high_open: bool) -> str:
    """``an integer >= 1``, ``a number > 0 and < 1``."""
    noun = "an integer" if kind is int else "a number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return noun + (" " + " and ".join(parts) if parts else "")
