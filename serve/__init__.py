"""Serve a trained classifier on SageMaker: uvicorn and MMS's Python workers, no Java.

The data's way: ``listener`` (uvicorn on the serving port) → ``gateway`` (routes, bounds,
admission) → ``registry`` (the models) → ``workers`` (a model's queue, batches, MMS's worker
processes, over ``mms``'s protocol) → ``handler`` in each worker (artifact → model → batched
predictions, with ``codecs``: request bodies → images, predictions → JSON, on ``runtimes``).
``server`` is the ``serve`` executable; ``settings`` is the table of environment variables.
Imports ``model_artifact``, never training code. Script mode (``SAGEMAKER_PROGRAM``, the
deployer's own ``inference.py``): ``script_mode`` (the server stages and prepares it),
``user_module`` (imports and calls it), ``script_defaults`` (our pipeline as
``model_fn``/``input_fn``/``predict_fn``/``output_fn``), ``script_service`` (the workers'
service). ``portable_inference`` is the ``code/inference.py`` that every artifact carries for
AWS's PyTorch inference container; ``portable_code`` writes that ``code/`` folder (training calls it).
"""
