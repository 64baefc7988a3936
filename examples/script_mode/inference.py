"""A course-style SageMaker inference script (``Model(entry_point="inference.py", source_dir=...)``).

It serves a ResNet18 whose state dict is ``model.pth`` (or this project's ``model.pt``) in the
model folder, as the course's PyTorch containers did, and runs unchanged on our serving image
and on AWS's PyTorch inference container. The number of classes comes from the weights; class
names from ``artifact.json`` (this project's models) or ``labels.txt`` (one per line), else
indices. Every answer carries ``"served_by": "examples/script_mode/inference.py"``.

    from sagemaker.model import Model
    Model(image_uri="byoc-classifier-serving-gpu:latest", model_data="file://.../model.tar.gz",
          entry_point="inference.py", source_dir="examples/script_mode", role=ROLE,
          predictor_cls=Predictor).deploy(initial_instance_count=1, instance_type="local")
"""

import base64
import io
import json
import logging
import os

import torch
from PIL import Image
from sagemaker_inference.errors import GenericInferenceToolkitError  # in our image and AWS's
from torchvision import models, transforms

log = logging.getLogger(__name__)
SERVED_BY = "examples/script_mode/inference.py"
JPEG, JSON = "image/jpeg", "application/json"
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
preprocess = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def _labels(model_dir, num_classes):
    """Class names: artifact.json's (this project), labels.txt's, else the indices."""
    artifact, labels = os.path.join(model_dir, "artifact.json"), os.path.join(model_dir, "labels.txt")
    if os.path.isfile(artifact):
        with open(artifact) as f:
            return json.load(f)["class_names"]
    if os.path.isfile(labels):
        with open(labels) as f:
            return [line.strip() for line in f if line.strip()]
    return [str(i) for i in range(num_classes)]


def model_fn(model_dir):
    """ResNet18 with as many outputs as the saved head has."""
    name = "model.pth" if os.path.isfile(os.path.join(model_dir, "model.pth")) else "model.pt"
    state = torch.load(os.path.join(model_dir, name), map_location=device, weights_only=True)
    num_classes = state["fc.weight"].shape[0]
    model = models.resnet18(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    model.load_state_dict(state)
    model.labels = _labels(model_dir, num_classes)
    log.info("loaded %s with %d classes", name, num_classes)
    return model.to(device).eval()


def input_fn(request_body, content_type=JPEG):
    """A JPEG (or any image) body, or JSON {"b64": "<base64 image>"}."""
    if content_type == JSON:
        request = json.loads(request_body)
        return Image.open(io.BytesIO(base64.b64decode(request["b64"]))).convert("RGB")
    if content_type.startswith("image/"):
        return Image.open(io.BytesIO(request_body)).convert("RGB")
    raise GenericInferenceToolkitError(415, f"unsupported content type {content_type}")  # answered as a 415


def predict_fn(input_object, model):
    with torch.no_grad():
        probabilities = model(preprocess(input_object).unsqueeze(0).to(device)).softmax(dim=1)[0]
    best = int(probabilities.argmax())
    return {"label": model.labels[best], "probability": round(float(probabilities[best]), 6)}


def output_fn(prediction, accept=JSON):
    return json.dumps(prediction | {"served_by": SERVED_BY}), JSON
