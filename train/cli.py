"""The ``train`` executable: the sagemaker-training toolkit's ``train``, with our defaults.

It runs the toolkit's trainer (SM_* environment, hyperparameter arguments, failure file,
exit code) with ``train.launcher:main`` as the framework module unless
SAGEMAKER_TRAINING_MODULE says otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from train import config

FRAMEWORK_MODULE = "train.launcher:main"


def main() -> None:
    """Entry point of the training image (``docker run IMAGE train``)."""
    base = config.base_dir()
    if not base.is_dir() and base == Path(config.DEFAULT_BASE_DIR):
        sys.exit(
            "error: no /opt/ml here: set SAGEMAKER_BASE_DIR to a folder laid out like /opt/ml "
            "(input/config/*.json, input/data/<channel>/)"
        )
    os.environ.setdefault("SAGEMAKER_TRAINING_MODULE", FRAMEWORK_MODULE)
    # The toolkit int()s SAGEMAKER_CONTAINER_LOG_LEVEL: "INFO" would crash it before any log line.
    if not os.environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL", "0").strip().isdigit():
        os.environ["SAGEMAKER_CONTAINER_LOG_LEVEL"] = str(config.log_level())
    # The toolkit writes its failure file only into an existing folder; otherwise a failure
    # exits 0 with no reason (seen with a malformed resourceconfig.json).
    (base / "output").mkdir(parents=True, exist_ok=True)
    from sagemaker_training import trainer  # importing reads SAGEMAKER_BASE_DIR

    trainer.train()


if __name__ == "__main__":
    main()
