"""The epoch's running sums and its step log line."""

from __future__ import annotations

import logging

import pytest

from train import progress


@pytest.mark.parametrize("seconds,text", [(0, "0:00"), (75.4, "1:15"), (3725, "1:02:05")])
def test_clock(seconds, text):
    assert progress.clock(seconds) == text


def test_the_logger_times_each_step_and_logs_at_the_interval(caplog):
    meter = progress.Meter(batches=2)  # a resumed epoch: 2 batches were done before
    heard = []
    logger = progress.MetricLogger(meter, 3, 2, on_step=lambda waited, elapsed: heard.append((waited, elapsed)))
    with caplog.at_level(logging.INFO):
        for _ in logger.log_every(range(4)):
            meter.add(0.5, 1, 2)
            logger.step_done()
    assert meter.batches == 6 and meter.seen == 8 and meter.loss_sum == pytest.approx(4.0) and logger.total == 6
    assert len(heard) == 4 and all(0 <= w <= e for w, e in heard)
    assert meter.total_time == pytest.approx(sum(e for _, e in heard))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("epoch 3 step 4/6 loss 0.5000 ") and " img/s data wait " in lines[0]
    assert lines[1].endswith("eta 0:00")
