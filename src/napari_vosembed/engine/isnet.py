"""ISNet (``ISNetDIS``) in torch, with its weights read from IMG.LY's ONNX export.

Implements the network of Qin et al., "Highly Accurate Dichotomous Image Segmentation",
ECCV 2022 (https://github.com/xuebinqin/DIS, ``models/isnet.py``): a stride-2 input convolution
followed by the U^2-Net encoder-decoder of nested residual U-blocks (RSU7, RSU6, RSU5, RSU4,
RSU4F) and six side outputs.

The ONNX export has its BatchNorms folded into the convolutions (so a ``REBNCONV`` here is a
biased convolution followed by ReLU) and stores its weights as float16; they are loaded as
float32. Upsampling follows the tensors' sizes, as in the original code, so any input size
works: the feature map at stride ``s`` of an ``H x W`` input is ``ceil(H / s) x ceil(W / s)``.

Input normalisation (IMG.LY ``tensorHWCtoBCHW``): ``(v - 128) / 256`` for 8-bit values ``v``,
i.e. ``x * 255 / 256 - 0.5`` for ``x`` in [0, 1]; see :func:`normalize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError

ENCODER_CHANNELS = {2: 64, 4: 128, 8: 256, 16: 512, 32: 512, 64: 512}
DECODER_CHANNELS = {2: 64, 4: 64, 8: 128, 16: 256, 32: 512, 64: 512}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map RGB in [0, 1] to the network's input range, ``(255 x - 128) / 256``."""
    return images * (255.0 / 256.0) - 0.5


def _upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 (dilated) convolution + ReLU; the BatchNorm of the original is folded into the conv."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_s1(x))


class RSU(nn.Module):
    """Residual U-block RSU-L (L = ``height``, 4..7) of U^2-Net: an L-level U-Net plus a residual."""

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, height):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]
        for i in range(2, self.height):
            skips.append(getattr(self, f"rebnconv{i}")(_pool(skips[-1])))
        hx = getattr(self, f"rebnconv{self.height}")(skips[-1])
        for i in range(self.height - 1, 0, -1):
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skips[i - 1]), 1))
            if i > 1:
                hx = _upsample_like(hx, skips[i - 2])
        return hx + hxin


class RSU4F(nn.Module):
    """RSU-4F of U^2-Net: dilated convolutions (1, 2, 4, 8) instead of pooling."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, 1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, 2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, 4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, 8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, 4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, 2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


class ISNetOutput(NamedTuple):
    """Encoder stages ``hx1..hx6`` and decoder stages ``hx1d..hx5d, hx6`` (strides 2..64),
    and the side-output logits at input resolution (``d1`` only, or ``d1..d6``)."""

    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]
    side_logits: list[torch.Tensor]


class ISNetDIS(nn.Module):
    """ISNet of DIS (``ISNetDIS`` in ``models/isnet.py``), BatchNorm folded, any input size."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 64, 3, stride=2, padding=1)
        self.stage1 = RSU(7, 64, 32, 64)
        self.stage2 = RSU(6, 64, 32, 128)
        self.stage3 = RSU(5, 128, 64, 256)
        self.stage4 = RSU(4, 256, 128, 512)
        self.stage5 = RSU4F(512, 256, 512)
        self.stage6 = RSU4F(512, 256, 512)
        self.stage5d = RSU4F(1024, 256, 512)
        self.stage4d = RSU(4, 1024, 128, 256)
        self.stage3d = RSU(5, 512, 64, 128)
        self.stage2d = RSU(6, 256, 32, 64)
        self.stage1d = RSU(7, 128, 16, 64)
        for i, ch in enumerate((64, 64, 128, 256, 512, 512), start=1):
            setattr(self, f"side{i}", nn.Conv2d(ch, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, all_sides: bool = False, encoder_only: bool = False) -> ISNetOutput:
        """Run on normalised input (see :func:`normalize`); ``x`` is (B, 3, H, W). ``encoder_only``:
        stop after the encoder (about half the work; no decoder stages, no side outputs)."""
        hx1 = self.stage1(self.conv_in(x))
        hx2 = self.stage2(_pool(hx1))
        hx3 = self.stage3(_pool(hx2))
        hx4 = self.stage4(_pool(hx3))
        hx5 = self.stage5(_pool(hx4))
        hx6 = self.stage6(_pool(hx5))
        if encoder_only:
            return ISNetOutput([hx1, hx2, hx3, hx4, hx5, hx6], [], [])
        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), 1))
        decoder = [hx1d, hx2d, hx3d, hx4d, hx5d, hx6]
        n_sides = 6 if all_sides else 1
        sides = [
            _upsample_like(getattr(self, f"side{i + 1}")(decoder[i]), x) for i in range(n_sides)
        ]
        return ISNetOutput([hx1, hx2, hx3, hx4, hx5, hx6], decoder, sides)


def _conv_module_name(node) -> str:
    """``/stage1/rebnconvin/conv_s1/Conv_output_0`` -> ``stage1.rebnconvin.conv_s1``."""
    out = node.output[0]
    suffix = "/Conv_output_0"
    if not out.startswith("/") or not out.endswith(suffix):
        raise ModelFileError(f"Unexpected ONNX Conv output name {out!r}: not an ISNet export.")
    return out[1 : -len(suffix)].replace("/", ".")


def load_isnet_onnx(path: str | Path) -> ISNetDIS:
    """Build :class:`ISNetDIS` with the weights of the ONNX export at ``path``.

    Each ONNX Conv node is matched to the torch module named by its output tensor (the exporter
    names outputs after the module path), its attributes are checked against the module, and its
    weight / bias initializers (float16 or float32) are copied in as float32. Every Conv2d of the
    torch network must be filled exactly once.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise ModelFileError(f"Cannot read the ONNX model {path}: {exc}") from exc
    ops = {node.op_type for node in graph.node}
    if "BatchNormalization" in ops or "ConvInteger" in ops:
        raise ModelFileError(
            f"{path}: unsupported ISNet export (needs float convolutions with BatchNorm folded in)."
        )
    initializers = {init.name: init for init in graph.initializer}
    net = ISNetDIS()
    modules = dict(net.named_modules())
    filled: set[str] = set()
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        name = _conv_module_name(node)
        conv = modules.get(name)
        if len(node.input) != 3:
            raise ModelFileError(f"{path}: ONNX Conv {name!r} has no bias input.")
        if not isinstance(conv, nn.Conv2d) or name in filled:
            raise ModelFileError(f"{path}: ONNX Conv {name!r} has no unique counterpart in ISNet.")
        attrs = {a.name: list(a.ints) if a.ints else a.i for a in node.attribute}
        expected = {
            "strides": list(conv.stride),
            "dilations": list(conv.dilation),
            "pads": list(conv.padding) * 2,
            "group": conv.groups,
        }
        for key, value in expected.items():
            if attrs.get(key, value) != value:
                raise ModelFileError(f"{path}: Conv {name!r} has {key}={attrs[key]}, ISNet {value}.")
        for param, input_name in zip((conv.weight, conv.bias), node.input[1:3]):
            array = numpy_helper.to_array(initializers[input_name]).astype(np.float32)
            if tuple(array.shape) != tuple(param.shape):
                raise ModelFileError(
                    f"{path}: {name} expects {tuple(param.shape)}, the file has {array.shape}."
                )
            with torch.no_grad():
                param.copy_(torch.from_numpy(array))
        filled.add(name)
    missing = {n for n, m in modules.items() if isinstance(m, nn.Conv2d)} - filled
    if missing:
        raise ModelFileError(f"{path}: no weights for {len(missing)} ISNet convolutions, e.g. {min(missing)}.")
    return net.eval()
