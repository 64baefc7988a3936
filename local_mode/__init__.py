"""The user's workflows around the images: push to ECR, and (next) the SageMaker SDK's local mode."""
