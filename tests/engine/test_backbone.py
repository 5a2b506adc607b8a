"""Backbone contract with the test-only TinyBackbone, user networks, get_backbone, resolve_device."""

import math

import numpy as np
import pytest
import torch

from napari_vosembed.engine import backbone as bb
from napari_vosembed.errors import DeviceError, ModelFileError

SIZES = [(1, 1), (7, 5), (37, 50), (64, 64), (65, 130)]


def _images(h, w, batch=2, seed=0):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def check_contract(backbone, images):
    out = backbone(images)
    b, _, h, w = images.shape
    assert sorted(out.features) == backbone.strides
    for stride, channels in backbone.feature_channels.items():
        feature = out.features[stride]
        assert feature.shape == (b, channels, math.ceil(h / stride), math.ceil(w / stride))
        assert feature.dtype == torch.float32 and torch.isfinite(feature).all()
    if out.saliency is not None:
        assert out.saliency.shape == (b, 1, h, w)
        assert 0 <= out.saliency.min() and out.saliency.max() <= 1
    return out


@pytest.mark.parametrize("size", SIZES)
def test_tiny_any_size(size):
    check_contract(bb.TinyBackbone(), _images(*size))


def test_tiny_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = bb.TinyBackbone(), bb.TinyBackbone()
    assert torch.equal(torch.get_rng_state(), state)
    assert first.feature_channels == {4: 16, 8: 32}
    images = _images(40, 60)
    a, b = first(images), second(images)
    for stride in first.strides:
        assert torch.equal(a.features[stride], b.features[stride])
    assert torch.equal(a.saliency, b.saliency)
    assert not torch.equal(bb.TinyBackbone(seed=1)(images).features[8], a.features[8])


def test_tiny_batch_items_are_independent():
    images = _images(30, 45, batch=3)
    batched = bb.TinyBackbone()(images)
    single = bb.TinyBackbone()(images[1:2])
    assert torch.allclose(batched.features[4][1:2], single.features[4], atol=1e-6)


def test_tiny_saliency_and_colour_features():
    images = torch.zeros(1, 3, 32, 32)
    images[:, 0, 8:24, 8:24] = 1.0
    out = bb.TinyBackbone()(images)
    assert out.saliency[0, 0, 16, 16] > 0.5 and out.saliency[0, 0, 0, 0] == 0
    assert torch.equal(out.features[8][0, :3, 2, 2], torch.tensor([1.0, 0.0, 0.0]))


def test_rejects_bad_images():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        bb.TinyBackbone()(torch.zeros(3, 10, 10))


def test_resolve_device(monkeypatch):
    assert bb.resolve_device("cpu") == torch.device("cpu")
    assert bb.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bb.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        bb.resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        bb.resolve_device("banana")
    with pytest.raises(DeviceError, match="Unsupported device"):
        bb.resolve_device("meta")


def test_resolve_precision(monkeypatch):
    monkeypatch.delenv("VOSEMBED_PRECISION", raising=False)
    assert bb.resolve_precision(None) == "fp32" and bb.resolve_precision("bf16") == "bf16"
    monkeypatch.setenv("VOSEMBED_PRECISION", "bf16")
    assert bb.resolve_precision(None) == "bf16" and bb.resolve_precision("fp32") == "fp32"
    monkeypatch.setenv("VOSEMBED_PRECISION", "half")
    with pytest.raises(DeviceError, match="Unknown precision 'half'"):
        bb.resolve_precision(None)


def test_resolve_device_auto_picks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bb.resolve_device("auto") == torch.device("cuda")


class _Stride4(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 4, stride=4)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def torchscript_file(tmp_path):
    path = tmp_path / "user_net.pt"
    torch.jit.script(_Stride4()).save(str(path))
    return path


def test_torchscript_backbone(torchscript_file):
    backbone = bb.get_backbone(torchscript_file, device="cpu")
    assert isinstance(backbone, bb.TorchScriptBackbone)
    assert backbone.feature_channels == {4: 6} and backbone.name == "user_net"
    for size in SIZES:
        assert check_contract(backbone, _images(*size)).saliency is None
    images = _images(32, 48)
    expected = _Stride4()
    expected.load_state_dict(torch.jit.load(str(torchscript_file)).state_dict())
    assert torch.allclose(backbone(images).features[4], expected(images), atol=1e-6)
    mixed = bb.get_backbone(torchscript_file, device="cpu", precision="bf16")
    assert mixed.precision == "bf16"
    assert torch.allclose(mixed(images).features[4], expected(images), atol=0.05)


def test_torchscript_wrong_stride_or_channels(torchscript_file):
    with pytest.raises(ModelFileError, match="stride 8"):
        bb.TorchScriptBackbone(torchscript_file, stride=8)
    with pytest.raises(ModelFileError, match="6 channels, not 5"):
        bb.TorchScriptBackbone(torchscript_file, stride=4, channels=5)


def _onnx_stride2_file(path):
    """A hand-built ONNX graph: one 2x2 stride-2 convolution, dynamic batch and size."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2) / 60
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["features"], strides=[2, 2], kernel_shape=[2, 2])],
        "stride2",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", 5, "h2", "w2"])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


def test_onnx_backbone(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "user_net.onnx"
    weight = _onnx_stride2_file(path)
    backbone = bb.get_backbone(path, device="cpu", stride=2)
    assert isinstance(backbone, bb.OnnxBackbone) and backbone.feature_channels == {2: 5}
    for size in SIZES:
        check_contract(backbone, _images(*size))
    images = _images(16, 20)
    expected = torch.nn.functional.conv2d(images, torch.from_numpy(weight), stride=2)
    assert torch.allclose(backbone(images).features[2], expected, atol=1e-5)


def test_onnx_backbone_without_onnxruntime(tmp_path, monkeypatch):
    path = tmp_path / "user_net.onnx"
    _onnx_stride2_file(path)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ModelFileError, match="pip install onnxruntime"):
        bb.OnnxBackbone(path)


def test_get_backbone_names(tmp_path):
    assert isinstance(bb.get_backbone("tiny", device="cpu"), bb.TinyBackbone)
    with pytest.raises(ModelFileError, match="Unknown backbone 'nope'"):
        bb.get_backbone("nope")
    odd = tmp_path / "net.h5"
    odd.write_bytes(b"")
    with pytest.raises(ModelFileError, match="unknown network format"):
        bb.get_backbone(odd)
    with pytest.raises(ModelFileError, match="Cannot load the TorchScript"):
        bb.get_backbone(odd.rename(tmp_path / "net.pt"))


class PaddedGray:
    """A stand-in for the prompt model's encoder: channel c of the 64 x 64 embedding is the gray level
    of the padded 1024 x 1024 encoder input (the real preprocessing), averaged over 16 x 16 pixels."""

    def encode(self, rgb):
        import cv2

        from napari_vosembed.engine.prompt_model import encoder_input

        gray = cv2.resize(encoder_input(rgb)[0].mean(0), (64, 64), interpolation=cv2.INTER_AREA)
        return np.broadcast_to(gray[None], (256, 64, 64)).astype(np.float32)


def test_the_prompt_encoder_backbone_keeps_the_frame_and_drops_the_padding(monkeypatch):
    from napari_vosembed.engine import prompt_model

    monkeypatch.setattr(prompt_model, "load_model", lambda device="cpu": PaddedGray())
    backbone = bb.get_backbone("minisam", "cpu")
    images = torch.zeros(1, 3, 96, 256)
    images[:, :, :48] = 0.8  # bright top half, dark bottom half; the encoder pads the bottom with zeros
    out = check_contract(backbone, images)
    assert out.saliency is None and backbone.strides == [16]
    feature = out.features[16][0, 0]
    assert feature.shape == (6, 16)
    dark = float(np.mean(-prompt_model.PIXEL_MEAN / prompt_model.PIXEL_STD))  # a black pixel; the padding is 0
    assert feature[:2].min() > 0.5 and torch.allclose(feature[-2:], torch.full_like(feature[-2:], dark), atol=0.05)


@pytest.mark.parametrize("size", [100, 512, 513, 1100, 2048])
def test_tiles_cover_the_image_once_on_the_coarsest_grid(size):
    spans = bb.tile_spans(size, 512, 64)
    owned = [(a, b) for _, _, a, b in spans]
    assert owned[0][0] == 0 and owned[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(owned, owned[1:]))  # a partition, in order
    for start, stop, own_start, own_stop in spans:
        assert stop - start <= 512 and start % 32 == 0 and own_start % 32 == 0
        assert (own_start - start >= 32 or start == 0) and (stop - own_stop >= 32 or stop == size)


def test_a_large_image_embedded_in_tiles_has_the_whole_image_features():
    tiny = bb.TinyBackbone()
    images = _images(200, 304, batch=2)  # whole cells: the tiny backbone's mean colour pools by cell
    whole, tiles = tiny(images), bb.tiled(tiny, images, 64)  # 4 x 6 tiles of 64 pixels
    assert tiles.features.keys() == whole.features.keys() and tiles.saliency.shape == whole.saliency.shape
    for stride in whole.features:
        assert torch.allclose(tiles.features[stride], whole.features[stride], atol=1e-5)
    assert torch.equal(bb.tiled(tiny, images, 512).features[8], whole.features[8])  # one tile: the whole image
