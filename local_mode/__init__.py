"""The user's workflow through the SageMaker Python SDK, in local mode or in the cloud.

- ``session``: local mode for both SDKs: preflight checks, sessions, clean-up.
- ``fit``: train with the training image (SDK v2 ``Estimator``; built-in trainer or script mode),
  and the cloud options (spot, time limits, checkpoints).
- ``fit_v3``: the same with SDK v3's ``ModelTrainer`` (runs in ``.venv-sdk3``).
- ``deploy``, ``deploy_v3``: deploy model.tar.gz with a serving image as an endpoint and call it.
- ``transform``, ``transform_v3``: batch transform with a serving image.
- ``demo``: ``make demo``, the whole workflow on the embedded sample dataset.
- ``terminal``: the terminal output of long local-mode runs (phases, progress, a log file).

Hyperparameter tuning is in ``tuning/``; pushing the images to ECR is in ``ecr/``.
"""
