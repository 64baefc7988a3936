"""The user's workflow through the SageMaker Python SDK, in local mode or in the cloud.

- ``session``: the local-mode session, its preflight checks and clean-up.
- ``fit``: train with the training image (SDK v2 ``Estimator``; built-in trainer or script mode).
- ``fit_v3``: the same with SDK v3's ``ModelTrainer`` (runs in ``.venv-sdk3``).
- ``deploy``: deploy model.tar.gz with a serving image as an endpoint and call it.
- ``transform``: batch transform with a serving image.
- ``demo``: ``make demo``, the whole workflow on the embedded sample dataset.
- ``terminal``: the terminal output of long local-mode runs (phases, progress, a log file).

Hyperparameter tuning is in ``tuning/``; pushing the images to ECR is in ``ecr/``.
"""
