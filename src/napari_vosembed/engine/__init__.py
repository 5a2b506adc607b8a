"""Backbones (ISNet in torch and user networks) and the model cache."""

from .backbone import (
    Backbone,
    BackboneOutput,
    ISNetBackbone,
    OnnxBackbone,
    TinyBackbone,
    TorchScriptBackbone,
    feature_size,
    get_backbone,
    resolve_device,
)
from .fetch import cache_dir, fetch_models, model_path

__all__ = [
    "Backbone",
    "BackboneOutput",
    "ISNetBackbone",
    "OnnxBackbone",
    "TinyBackbone",
    "TorchScriptBackbone",
    "cache_dir",
    "feature_size",
    "fetch_models",
    "get_backbone",
    "model_path",
    "resolve_device",
]
