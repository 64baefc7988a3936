"""Script mode: our pipeline as the four functions a user module may override.

- ``model_fn``: the artifact (``model_artifact.load``: checksum, ``weights_only``);
- ``input_fn``: our codecs (images, JSON instances, their bounds) → a ``codecs.Request``;
- ``predict_fn``: one forward pass → class probabilities;
- ``output_fn``: our JSON answer (top-k labels).

They work with a user's model (``model_fn`` returning any ``torch.nn.Module`` classifier)
and with a user's tensors: preprocessing and class names come from ``artifact.json`` when the
model folder has one, else torchvision's ImageNet evaluation (224 px) and class indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

import model_artifact
from serve import codecs
from serve.settings import Settings

DEFAULT_IMAGE_SIZE = 224  # without artifact.json: torchvision's ImageNet evaluation


@dataclass
class Prediction:
    """Probabilities of one request's images, and the request (for its top_k and layout)."""

    probabilities: torch.Tensor
    request: codecs.Request | None = None


class Defaults:
    """Our functions, bound to one model folder and the serving settings."""

    def __init__(self, model_dir: str | Path, settings: Settings, device: torch.device):
        self.model_dir, self.settings, self.device = Path(model_dir), settings, device
        has_metadata = (self.model_dir / model_artifact.METADATA_FILE).is_file()
        self.meta = model_artifact.load_metadata(self.model_dir) if has_metadata else None
        prep = self.meta.preprocessing if self.meta else model_artifact.Preprocessing.for_image_size(DEFAULT_IMAGE_SIZE)
        self.options = codecs.DecodeOptions(
            settings.max_images, settings.max_pixels, prep.resize_size, settings.max_request_pixels,
            prepare=model_artifact.eval_transform(prep),
        )  # fmt: skip
        self.headers: dict[str, str] = {}  # the current request's, set by the service

    def model_fn(self, model_dir: str) -> torch.nn.Module:
        model, _ = model_artifact.load(model_dir, self.device)
        return model

    def input_fn(self, input_data: bytes | str, content_type: str) -> codecs.Request:
        codecs.check_accept(self.headers.get("accept"), content_type)
        body = input_data.encode() if isinstance(input_data, str) else input_data
        request = codecs.decode(body, content_type, self.options)
        codecs.read_answer_options(request, self.headers.get("accept"), self.headers.get(codecs.CUSTOM_ATTRIBUTES))
        return request

    @torch.inference_mode()
    def predict_fn(self, data, model: torch.nn.Module) -> Prediction:
        """A ``codecs.Request`` (ours) or a tensor of one image or a batch (a user's input_fn)."""
        request = data if isinstance(data, codecs.Request) else None
        batch = torch.stack(data.inputs) if request else torch.as_tensor(data)
        batch = batch.unsqueeze(0) if batch.dim() == 3 else batch
        device = next(model.parameters(), torch.empty(0)).device
        return Prediction(model(batch.to(device)).float().softmax(dim=1).cpu(), request)

    def output_fn(self, prediction, accept: str) -> tuple[str, str]:
        """(body, content type): our JSON for probabilities or scores; JSON of anything else.
        The client's own Accept header decides (``accept`` is already defaulted)."""
        if isinstance(prediction, Prediction):
            probabilities, request = prediction.probabilities, prediction.request
        elif isinstance(prediction, torch.Tensor) and prediction.dim() == 2:
            probabilities, request = _as_probabilities(prediction.detach().float().cpu()), None
        else:
            codecs.check_accept(self.headers.get("accept"))
            value = prediction.tolist() if hasattr(prediction, "tolist") else prediction
            return json.dumps(value), codecs.JSON
        if request is None:
            request = codecs.Request([])
            codecs.read_answer_options(request, self.headers.get("accept"), self.headers.get(codecs.CUSTOM_ATTRIBUTES))
        codecs.check_accept(self.headers.get("accept"), request.media_type)  # the client's, not the default
        names = self.meta.class_names if self.meta else [str(i) for i in range(probabilities.shape[1])]
        body = codecs.encode_response(request, probabilities, names, self.settings.top_k)
        return body, request.media_type


def _as_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Rows that already are probabilities stay; anything else (logits) goes through softmax."""
    sums = scores.sum(dim=1)
    is_distribution = bool((scores >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
    return scores if is_distribution else scores.softmax(dim=1)
