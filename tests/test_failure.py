"""The failure file: one short line whatever the exception."""

from __future__ import annotations

import pytest
from torch._utils import ExceptionWrapper

from train.failure import Stopped, TrainingError, reported


def _reason(tmp_path, exc: BaseException) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info, reported(tmp_path):
        raise exc
    return exit_info.value.code, (tmp_path / "failure").read_text()


def test_an_internal_error_is_one_line_with_its_first_line(tmp_path):
    code, reason = _reason(tmp_path, RuntimeError("CUDA error: an illegal memory access\nsecond\nthird"))
    assert code == 1
    assert reason == "internal error: RuntimeError: CUDA error: an illegal memory access (see the log)\n"


def test_a_loader_workers_error_is_reported_not_pytorchs_wrapper(tmp_path):
    try:
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1>: No space left on device (28)")
    except RuntimeError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")  # as a worker sends it back
    with pytest.raises(RuntimeError) as raised:
        wrapped.reraise()  # as the DataLoader raises it in the training process
    assert _reason(tmp_path, raised.value)[1] == (
        "internal error: RuntimeError in DataLoader worker process 1: unable to allocate shared memory(shm) "
        "for file </torch_1>: No space left on device (28) (see the log)\n"
    )


def test_an_empty_message_still_names_the_error(tmp_path):
    assert _reason(tmp_path, MemoryError())[1] == "internal error: MemoryError (see the log)\n"


def test_training_errors_and_stops_are_one_line(tmp_path):
    code, reason = _reason(tmp_path, TrainingError("cannot read\n  /data/a\nb.jpg"))
    assert (code, reason) == (1, "cannot read /data/a b.jpg\n")
    (tmp_path / "failure").unlink()
    assert _reason(tmp_path, Stopped("stopped by signal"))[0] == 143


def test_the_reason_is_capped(tmp_path):
    reason = _reason(tmp_path, TrainingError("x" * 5000))[1]
    assert reason == "x" * 1024 + "\n"


def test_the_first_reason_wins(tmp_path):
    (tmp_path / "failure").write_text("rank 1 failed first\n")
    _reason(tmp_path, TrainingError("later"))
    assert (tmp_path / "failure").read_text() == "rank 1 failed first\n"
