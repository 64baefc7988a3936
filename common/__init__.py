"""What the trainer, the server and the SDK-side drivers share, in the standard library only.

Importable everywhere: in the training image, in the CPU serving image (no torch), and in the
SDK virtual environments (``.venv``, and ``.venv-sdk3`` without torch).

- ``cpus``: how many CPUs this process may keep busy (affinity and cgroup quota).
- ``metrics``: the metric lines the trainer prints and the regexes that read them.
- ``images``: which files count as images, and the embedded sample dataset's classes.
"""
