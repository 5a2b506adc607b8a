"""The torch ISNet port with the real weights: agreement with onnxruntime, any size, saliency.

Skipped when the model has not been fetched (`vosembed fetch-models`).
"""

import math

import numpy as np
import pytest
import torch

from napari_vosembed.engine import fetch, isnet
from napari_vosembed.engine.backbone import ISNetBackbone, get_backbone
from napari_vosembed.errors import ModelFileError


@pytest.fixture(scope="module")
def model_file():
    path = fetch.default_model_path()
    if not path.is_file() or path.stat().st_size != fetch.MODEL_SIZE:
        pytest.skip(f"ISNet model not cached at {path}; run `vosembed fetch-models` to enable")
    return path


@pytest.fixture(scope="module")
def backbone(model_file):
    return ISNetBackbone(model_file)


def _astronaut(size=None):
    from skimage import data, transform

    image = data.astronaut()
    if size is not None:
        image = transform.resize(image, size, order=1, preserve_range=True)
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]


def test_matches_onnxruntime(model_file):
    ort = pytest.importorskip("onnxruntime")
    net = isnet.load_isnet_onnx(model_file)
    x = isnet.normalize(_astronaut((1024, 1024)))
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        out = net(x, all_sides=True)
    for side, reference in zip(out.side_logits, expected[:6]):
        assert np.abs(torch.sigmoid(side).numpy() - reference).max() < 2e-3
    for feature, reference in zip(out.decoder, expected[6:]):
        assert np.abs(feature.numpy() - reference).max() < 2e-3 * np.abs(reference).max()


@pytest.mark.parametrize("size", [(100, 150), (33, 47), (65, 64)])
def test_any_size(backbone, size):
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = backbone(images)
    assert backbone.feature_channels == {2: 64, 4: 128, 8: 256, 16: 512, 32: 512, 64: 512}
    for stride, channels in backbone.feature_channels.items():
        assert out.features[stride].shape == (1, channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert out.saliency.shape == (1, 1, *size)
    assert 0 <= out.saliency.min() and out.saliency.max() <= 1


def test_decoder_features(model_file):
    decoder = ISNetBackbone(model_file, features="decoder")
    with torch.inference_mode():
        out = decoder(torch.rand(1, 3, 70, 90))
    assert {s: f.shape[1] for s, f in out.features.items()} == {2: 64, 4: 64, 8: 128, 16: 256, 32: 512, 64: 512}


def test_without_saliency_the_encoder_alone_runs_and_gives_the_same_features(model_file, backbone):
    encoder_only = get_backbone("isnet", device="cpu", saliency=False)
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full, alone = backbone(images), encoder_only(images)
    assert alone.saliency is None
    for stride, features in full.features.items():
        assert torch.equal(alone.features[stride], features)
    with torch.inference_mode():
        assert isnet.load_isnet_onnx(model_file)(isnet.normalize(images), encoder_only=True).decoder == []


def test_bfloat16_features_match_float32(model_file, backbone):
    """bfloat16 (autocast, channels-last) gives float32 maps whose per-pixel direction, the only
    thing the cache keeps, is that of float32's; and the same saliency to within 0.02."""
    mixed = ISNetBackbone(model_file, precision="bf16")
    assert mixed.precision == "bf16" and backbone.precision == "fp32"
    images = _astronaut((120, 200))
    with torch.inference_mode():
        full, fast = backbone(images), mixed(images)
    for stride in (4, 8, 16, 32):
        assert fast.features[stride].dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(fast.features[stride], full.features[stride], dim=1)
        assert cosine.min() > 0.995 and cosine.mean() > 0.9995
    assert (fast.saliency - full.saliency).abs().max() < 0.02


def test_saliency_on_real_image(backbone):
    """The astronaut (scikit-image) is salient; the wall beside her and the dark corner are not."""
    with torch.inference_mode():
        saliency = backbone(_astronaut()).saliency[0, 0].numpy()
    assert saliency[250:450, 100:300].mean() > 0.95
    assert saliency[100:200, 310:350].mean() < 0.1
    assert saliency[0:250, 470:].mean() < 0.05


def test_get_backbone_isnet(model_file):
    assert get_backbone("isnet", device="cpu").feature_source == "encoder"
    assert get_backbone("isnet", device="cpu", features="decoder").feature_source == "decoder"
    with pytest.raises(ValueError, match="features must be 'decoder' or 'encoder'"):
        get_backbone("isnet", device="cpu", features="middle")


def test_rejects_non_isnet_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFileError, match="Cannot read the ONNX model"):
        isnet.load_isnet_onnx(bad)
