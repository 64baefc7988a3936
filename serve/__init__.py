"""Serve a trained classifier on SageMaker: multi-model-server + sagemaker-inference.

The data's way: ``codecs`` (request bodies → images, predictions → JSON) → ``handler``
(artifact → model → batched predictions) → ``server`` (the ``serve`` executable).
``settings`` is the table of environment variables. Imports ``model_artifact``, never
training code. Script mode (``SAGEMAKER_PROGRAM``, the deployer's own ``inference.py``):
``script_mode`` (the server stages and prepares it), ``user_module`` (imports and calls it),
``defaults`` (our pipeline as ``model_fn``/``input_fn``/``predict_fn``/``output_fn``),
``script_service`` (the workers' service). ``portable_inference`` is the ``code/inference.py``
that every artifact carries for AWS's PyTorch inference container.
"""
