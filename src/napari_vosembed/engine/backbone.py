"""Backbones: networks that turn RGB frames into multi-scale feature maps (and maybe a saliency map).

Contract (every :class:`Backbone`):

* input: float32 tensor ``(B, 3, H, W)``, RGB in [0, 1], any ``H`` and ``W``;
* ``features[s]`` for every stride ``s`` in ``feature_channels``:
  ``(B, feature_channels[s], ceil(H / s), ceil(W / s))``;
* ``saliency``: ``(B, 1, H, W)`` in [0, 1], or ``None`` when the network has none.

Outputs are float32 on the backbone's device. Backbones start in eval mode with gradients off.
ISNet and TorchScript networks run on channels-last tensors in the backbone's ``precision``:
``"fp32"`` (default) or ``"bf16"``, bfloat16 autocast, twice as fast where the hardware computes
bfloat16 natively (`bf16_supported`), with features whose per-pixel cosine to float32's is above
0.9997 but PML labels 0.5 to 0.7 J&F lower (docs/benchmarks.md).
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeviceError, ModelFileError
from .fetch import model_path
from .isnet import DECODER_CHANNELS, ENCODER_CHANNELS, load_isnet_onnx, normalize


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise DeviceError(f"Unsupported device {device!r}: use 'auto', 'cpu' or 'cuda'.")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"Device {device!r} was requested but PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device 'cpu' or 'auto'."
        )
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"Device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) present.")
    return resolved


PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that says so, or a CPU with
    AVX-512 BF16 or AMX (oneDNN's check); elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str | None) -> str:
    """``precision`` checked; None -> the environment's ``VOSEMBED_PRECISION``, else ``"fp32"``."""
    if precision is None:
        precision = os.environ.get("VOSEMBED_PRECISION") or "fp32"
    if precision not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}: use {' or '.join(map(repr, PRECISIONS))} "
                          "(also for VOSEMBED_PRECISION).")
    return precision


def feature_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Size of the feature map at ``stride`` for an ``height x width`` input."""
    return math.ceil(height / stride), math.ceil(width / stride)


@dataclass
class BackboneOutput:
    """Feature maps by stride, and the saliency map (or ``None``)."""

    features: dict[int, torch.Tensor]
    saliency: torch.Tensor | None = None


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """A frozen feature extractor; see the module docstring for the shape contract."""

    name: str
    feature_channels: dict[int, int]
    device: torch.device
    precision: str = "fp32"

    @property
    def strides(self) -> list[int]:
        """The strides of the feature maps, ascending."""
        return sorted(self.feature_channels)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}.")
        return images.to(self.device, torch.float32)

    def _freeze(self, device: torch.device, precision: str | None = "fp32") -> None:
        self.device = device
        self.precision = resolve_precision(precision)
        self.to(device).eval().requires_grad_(False)
        self.to(memory_format=torch.channels_last)  # a third faster on a CPU, the same float32 labels

    def _mixed(self, x: torch.Tensor) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
        """``x`` channels-last, as the weights are, and the context to run the network in:
        bfloat16 autocast when the precision is ``"bf16"``."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.precision != "bf16":
            return x, contextlib.nullcontext()
        return x, torch.autocast(self.device.type, dtype=torch.bfloat16)

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """Features (and saliency) of ``images``, (B, 3, H, W) float32 RGB in [0, 1]."""


class ISNetBackbone(Backbone):
    """ISNet (DIS, Qin et al. 2022) with IMG.LY's pretrained weights.

    ``features="encoder"`` (default) gives the encoder stages ``hx1 .. hx6``; ``"decoder"`` gives
    the decoder stages ``hx1d, hx2d, hx3d, hx4d, hx5d`` and the bottom stage ``hx6`` (the tensors
    ISNet feeds to its side outputs). The saliency is the sigmoid of the finest side output ``d1``.
    """

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", features: str = "encoder",
                 saliency: bool = True, precision: str | None = "fp32"):
        super().__init__()
        if features not in ("decoder", "encoder"):
            raise ValueError(f"features must be 'decoder' or 'encoder', not {features!r}.")
        self.name = "isnet"
        self.feature_source = features
        self.saliency = saliency
        self.feature_channels = dict(DECODER_CHANNELS if features == "decoder" else ENCODER_CHANNELS)
        self.net = load_isnet_onnx(model_path() if path is None else path)
        self._freeze(resolve_device(device), precision)

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        encoder_only = self.feature_source == "encoder" and not self.saliency
        x, context = self._mixed(normalize(self._check_images(images)))
        with context:
            out = self.net(x, encoder_only=encoder_only)
        maps = [m.float() for m in (out.decoder if self.feature_source == "decoder" else out.encoder)]
        saliency = None if encoder_only else torch.sigmoid(out.side_logits[0].float())
        return BackboneOutput(dict(zip(self.strides, maps)), saliency)


class TinyBackbone(Backbone):
    """Test-only backbone: three seeded random convolutions (strides 4 and 8), no file needed.

    Each feature map starts with the image's mean RGB over the cell, so colours stay separable.
    The saliency is the RGB distance to the mean colour of the image border, divided by sqrt(3).
    """

    def __init__(self, device: str | torch.device = "cpu", seed: int = 0):
        super().__init__()
        self.name = "tiny"
        self.feature_channels = {4: 16, 8: 32}
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.utils.skip_init(nn.Conv2d, 3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.utils.skip_init(nn.Conv2d, 16, 13, 3, stride=2, padding=1)
        self.conv3 = nn.utils.skip_init(nn.Conv2d, 13, 29, 3, stride=2, padding=1)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        self._freeze(resolve_device(device))

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        x = self._check_images(images)
        h, w = x.shape[2:]
        f4 = self.conv2(F.relu(self.conv1(x)))
        f8 = self.conv3(F.relu(f4))
        features = {
            4: torch.cat((F.adaptive_avg_pool2d(x, feature_size(h, w, 4)), f4), 1),
            8: torch.cat((F.adaptive_avg_pool2d(x, feature_size(h, w, 8)), f8), 1),
        }
        border = torch.cat((x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]), 2)
        distance = (x - border.mean(2)[:, :, None, None]).norm(dim=1, keepdim=True)
        return BackboneOutput(features, (distance / math.sqrt(3)).clamp(0, 1))


class PromptEncoderBackbone(Backbone):
    """The prompt model's image encoder (SAM's TinyViT, `engine/prompt_model.py`) as a feature
    space: each frame's 256 x 64 x 64 embedding, cropped to the part that covers the frame (not the
    encoder's zero padding) and resized to ``ceil(H / 16) x ceil(W / 16)``. No saliency. The frame
    goes in as 8-bit RGB, as the prompt model reads it."""

    stride = 16

    def __init__(self, device: str | torch.device = "cpu"):
        from .prompt_model import load_model

        super().__init__()
        self.name = "minisam"
        self.feature_channels = {self.stride: 256}
        self._freeze(resolve_device(device))
        self.model = load_model(str(self.device))

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        from .prompt_model import INPUT_SIZE, resized_shape

        x = self._check_images(images)
        h, w = x.shape[2:]
        nh, nw = resized_shape(h, w)
        cells = INPUT_SIZE // 64
        rgb = (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        maps = [torch.from_numpy(self.model.encode(frame)[:, :math.ceil(nh / cells), :math.ceil(nw / cells)])
                for frame in rgb]
        out = F.interpolate(torch.stack(maps).float(), size=feature_size(h, w, self.stride), mode="bilinear",
                            align_corners=False)
        return BackboneOutput({self.stride: out.to(self.device)})


def _pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = x.shape[2:]
    return F.pad(x, (0, -w % stride, 0, -h % stride), mode="replicate")


class _SingleMapBackbone(Backbone):
    """A user network giving one feature map at ``stride``; the input is padded (replicating the
    border) to a multiple of the stride and the output cropped to ``ceil(H / s) x ceil(W / s)``."""

    def _setup(self, path: Path, stride: int | None, channels: int | None) -> None:
        probe = self._run(torch.zeros(1, 3, 256, 256, device=self.device))
        ph, pw = probe.shape[2:]
        found = 256 // ph if ph == pw and ph > 0 and 256 % ph == 0 else None
        if found is None or (stride is not None and stride != found):
            raise ModelFileError(
                f"{path}: a 256x256 input gives a {ph}x{pw} feature map, "
                f"which does not match stride {stride if stride is not None else '(a power of 2)'}."
            )
        if channels is not None and channels != probe.shape[1]:
            raise ModelFileError(f"{path}: the network gives {probe.shape[1]} channels, not {channels}.")
        self.feature_channels = {found: int(probe.shape[1])}

    @abc.abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output for a padded batch."""

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        x = self._check_images(images)
        (stride,) = self.feature_channels
        h, w = feature_size(x.shape[2], x.shape[3], stride)
        out = self._run(_pad_to_stride(x, stride))
        return BackboneOutput({stride: out[:, :, :h, :w]})


class TorchScriptBackbone(_SingleMapBackbone):
    """A TorchScript network ``(B, 3, H, W) in [0, 1] -> (B, C, H / stride, W / stride)``.

    ``stride`` and ``channels`` are checked against a probe run (or found by it when ``None``).
    """

    def __init__(self, path: str | Path, stride: int | None = None, channels: int | None = None,
                 device: str | torch.device = "cpu", precision: str | None = "fp32"):
        super().__init__()
        path = Path(path)
        self.name = path.stem
        self.device = resolve_device(device)
        try:
            self.net = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelFileError(f"Cannot load the TorchScript network {path}: {exc}") from exc
        self._freeze(self.device, precision)
        with torch.no_grad():
            self._setup(path, stride, channels)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x, context = self._mixed(x)
        with context:
            out = self.net(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ModelFileError(f"{self.name}: the network must return one (B, C, h, w) tensor.")
        return out.float()


class OnnxBackbone(_SingleMapBackbone):
    """An ONNX network ``input (B, 3, H, W) in [0, 1] -> first output (B, C, H / s, W / s)``, run
    with onnxruntime (CUDA provider when the device is CUDA). Needs dynamic H and W."""

    def __init__(self, path: str | Path, stride: int | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        path = Path(path)
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelFileError(
                f"Running the ONNX network {path} needs onnxruntime: pip install onnxruntime "
                "(or onnxruntime-gpu), or export the network to TorchScript instead."
            ) from exc
        self.name = path.stem
        self.device = resolve_device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            raise ModelFileError(f"Cannot load the ONNX network {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.eval()
        self._setup(path, stride, None)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            (out, *_) = self.session.run(None, {self.input_name: x.cpu().numpy()})
        except Exception as exc:
            raise ModelFileError(f"{self.name}: onnxruntime failed on a {tuple(x.shape)} input: {exc}") from exc
        if out.ndim != 4:
            raise ModelFileError(f"{self.name}: the first output must be (B, C, h, w), not {out.shape}.")
        return torch.from_numpy(out).float().to(self.device)


def get_backbone(name: str | Path, device: str | torch.device = "auto", stride: int | None = None,
                 features: str = "encoder", saliency: bool = True, precision: str | None = None) -> Backbone:
    """``"isnet"`` (its ``features`` stages; ``saliency`` False: none asked for, which spares
    ISNet's decoder when its encoder gives the features), ``"minisam"`` (the prompt model's
    encoder), ``"tiny"``, or the path of a TorchScript (``.pt``, ``.pth``, ``.ts``) or ``.onnx``
    network giving one feature map (``stride`` is checked, or found by a probe run).
    ``precision`` (`resolve_precision`) applies to ISNet and TorchScript networks."""
    if str(name) == "isnet":
        return ISNetBackbone(device=device, features=features, saliency=saliency, precision=precision)
    if str(name) == "tiny":
        return TinyBackbone(device=device)
    if str(name) == "minisam":
        return PromptEncoderBackbone(device=device)
    path = Path(name)
    if not path.is_file():
        raise ModelFileError(f"Unknown backbone {str(name)!r}: use 'isnet', 'minisam', 'tiny' or the path of a "
                             "network file.")
    if path.suffix.lower() == ".onnx":
        return OnnxBackbone(path, stride, device=device)
    if path.suffix.lower() in (".pt", ".pth", ".ts", ".torchscript"):
        return TorchScriptBackbone(path, stride, device=device, precision=precision)
    raise ModelFileError(f"{path}: unknown network format {path.suffix!r}; use TorchScript (.pt) or ONNX (.onnx).")


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles of at most `tile` pixels covering `size`: (start, stop, own start, own
    stop) each, where the owned parts partition [0, size) and each lies `overlap` / 2 or more inside
    its tile (but at the image's edges). Starts and owned bounds are multiples of `overlap` / 2."""
    if size <= tile:
        return [(0, size, 0, size)]
    step, half = tile - overlap, overlap // 2
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + step)
    bounds = [0, *(s + half for s in starts[1:]), size]
    return [(s, min(s + tile, size), bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def tiled(backbone: Backbone, images: torch.Tensor, tile: int) -> BackboneOutput:
    """`backbone(images)` for images larger than `tile` x `tile` pixels, run tile by tile: tiles
    overlapping by two cells of the coarsest stride, each giving the maps of its part of the image
    away from its borders (tiles start on the coarsest grid, so every map's cells line up). Bounds
    a pass's memory whatever the image size; the maps match the whole image's where the network
    sees no farther than a cell of the coarsest stride past a tile's part."""
    height, width = images.shape[2:]
    if height <= tile and width <= tile:
        return backbone(images)
    align = max(backbone.strides)
    tile = max(tile // align * align, 4 * align)
    features: dict[int, torch.Tensor] = {}
    saliency = None
    for y0, y1, oy0, oy1 in tile_spans(height, tile, 2 * align):
        for x0, x1, ox0, ox1 in tile_spans(width, tile, 2 * align):
            out = backbone(images[:, :, y0:y1, x0:x1])

            def place(full: torch.Tensor, part: torch.Tensor, stride: int) -> None:
                """The tile's own part of a map at `stride` into the whole image's map."""
                rows, cols = slice(oy0 // stride, -(-oy1 // stride)), slice(ox0 // stride, -(-ox1 // stride))
                full[:, :, rows, cols] = part[:, :, rows.start - y0 // stride:rows.stop - y0 // stride,
                                              cols.start - x0 // stride:cols.stop - x0 // stride]

            for stride, part in out.features.items():
                if stride not in features:
                    features[stride] = part.new_empty((*part.shape[:2], *feature_size(height, width, stride)))
                place(features[stride], part, stride)
            if out.saliency is not None:
                if saliency is None:
                    saliency = out.saliency.new_empty((*out.saliency.shape[:2], height, width))
                place(saliency, out.saliency, 1)
    return BackboneOutput(features, saliency)
