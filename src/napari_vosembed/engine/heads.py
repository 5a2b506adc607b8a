"""Small trained heads on top of the cached backbone features: one file format for all methods.

A head file (`torch.save`) holds the constructor `config`, the `state_dict`, the
`EmbeddingSettings` the head was trained on (inference embeds with the same ones) and the
training record `meta`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import nn

from ..errors import ModelFileError
from .cache import EmbeddingSettings

H = TypeVar("H", bound="Head")


class Head(nn.Module):
    """Base of the methods' heads: subclasses store their constructor arguments in `self.config`
    and name the command that trains them in `train_command`."""

    config: dict
    kind: ClassVar[str] = "head"
    train_command: ClassVar[str] = ""

    def save(self, path: Path, settings: EmbeddingSettings, meta: dict) -> None:
        torch.save({"config": self.config, "settings": settings.__dict__, "state_dict": self.state_dict(),
                    "meta": meta}, path)

    @classmethod
    def load(cls: type[H], path: str | Path) -> tuple[H, EmbeddingSettings]:
        """The head in `path` (in eval mode, frozen) and its embedding settings."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{cls.kind} {path} does not exist (train one with `{cls.train_command}`)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            head = cls(**blob["config"])
            head.load_state_dict(blob["state_dict"])
            settings = blob["settings"]
        except Exception as err:  # a foreign or damaged file: say which, and what it should be
            raise ModelFileError(f"{path} is not a {cls.kind} file ({type(err).__name__}: {err})") from err
        return head.eval().requires_grad_(False), EmbeddingSettings(**{**settings, "levels": tuple(settings["levels"])})
