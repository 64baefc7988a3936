"""Serve a trained classifier on SageMaker: multi-model-server + sagemaker-inference.

The data's way: ``codecs`` (request bodies → images, predictions → JSON) → ``handler``
(artifact → model → batched predictions) → ``server`` (the ``serve`` executable).
``settings`` is the table of environment variables. Imports ``model_artifact``, never
training code.
"""
