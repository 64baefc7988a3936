"""The epoch loop's helpers (the loop itself runs in tests/test_main.py's jobs)."""

from __future__ import annotations

import pytest

from train import loop


@pytest.mark.parametrize("seconds,text", [(0, "0:00"), (75.4, "1:15"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert loop.clock(seconds) == text
