"""Pushing the images to Amazon ECR (``make push``, ``python -m ecr.push``)."""
