"""Bounded numbers on a command line (common.arguments)."""

from __future__ import annotations

import argparse

import pytest

from common.arguments import number


def test_a_number_within_bounds_passes_and_an_integral_float_is_an_int():
    assert number(int, 1)("3.0") == 3 and isinstance(number(int, 1)("3.0"), int)
    assert number(float, 0, 1, high_open=True)("0.5") == 0.5


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (number(int, 1), "0", "'0' is not an integer >= 1"),
        (number(int, 1), "2.5", "'2.5' is not an integer >= 1"),
        (number(float, 0, low_open=True), "0", "'0' is not a number > 0"),
        (number(float, 0, 1, high_open=True), "1", "'1' is not a number >= 0 and < 1"),
        (number(float), "nan", "'nan' is not a number"),
        (number(float), "ten", "'ten' is not a number"),
    ],
)
def test_out_of_bounds_or_not_a_number_says_what_was_expected(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        parse(text)
    assert str(raised.value) == message
