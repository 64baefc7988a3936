"""Hyperparameter tuning with the training image: SageMaker's tuner, or the same search locally.

- ``tune``: the command line (``python -m tuning.tune local|cloud|cloud-best``).
- ``space``: the search space and the best-hyperparameters file that ``local_mode.fit`` reads.
- ``search``: the local search, Optuna trials run as SDK v2 local-mode training jobs.
- ``trial_log``: a trial's streamed output, read for the objective and pruning.
- ``results``: a finished local search as a table, CSV/JSON, a plot and the best file.
"""
