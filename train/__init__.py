"""Fine-tune a torchvision image classifier under the SageMaker training contract.

The data's way: ``config`` (what the job is told) → ``data`` (channel folders → loaders) →
``model`` → ``loop`` (epochs, metrics) → ``checkpoint`` → ``model_artifact`` (shared with
serving). ``launcher`` starts one process per device under the sagemaker-training toolkit;
``distributed`` joins them; ``main`` ties the line together.
"""
