"""Fine-tune a torchvision image classifier under the SageMaker training contract.

The data's way: ``config`` (what the job is told) → ``data`` (channel folders → loaders) →
``model`` → ``loop`` (epochs, metrics) → ``checkpoint`` → ``artifact`` (writes the model
artifact that ``model_artifact``, shared with serving, reads; and ``export-onnx``).
``launcher`` starts one process per device under the sagemaker-training toolkit;
``distributed`` joins them; ``main`` ties the line together.
"""
