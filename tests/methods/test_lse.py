import math

import numpy as np
import pytest
import torch
import zarr

from napari_vosembed.engine.cache import EmbeddingSettings
from napari_vosembed.engine.nets.lse import LSENet, fuse, losses, positions, similarity, targets
from napari_vosembed.errors import PromptError
from napari_vosembed.methods import available_methods, get_method
from napari_vosembed.methods.lse import Sample, frame_boxes
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import moving_square
from napari_vosembed.engine.nets.lse import GRID

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)


@pytest.fixture
def tiny_net(tmp_path):
    """An untrained network on the tiny test backbone (16 + 32 channels), saved as a network file."""
    torch.manual_seed(0)
    path = tmp_path / "lse.pt"
    LSENet(48, hidden=16, trunk=8, dim=8, centre_dim=4).save(path, TINY, {})
    return path


def session(frames, network, **params):
    return drive(get_method("lse")(device="cpu", network=str(network), prompt_model="none", **params)
                 .open_session(frames), quiet=True)


def test_similarity_and_fusion_follow_sec_4_3():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert similarity(e, torch.tensor([1.0, 0.0])).tolist() == pytest.approx([1.0, 2 / (1 + math.exp(2)), 1.0])
    fg = torch.tensor([[0.9, 0.2, 0.6]])
    fused = fuse(fg, e[None])
    # foreground cells 0 and 2 both embed (1, 0): their median is r = (1, 0)
    assert fused[0].tolist() == pytest.approx([(0.9 + 1) / 2, (0.2 + 2 / (1 + math.exp(2))) / 2, (0.6 + 1) / 2])
    nothing = torch.tensor([[0.1, 0.2, 0.3]])
    assert torch.equal(fuse(nothing, e[None]), nothing)


def test_location_targets_point_at_the_object_centre_and_are_zero_outside():
    shares = torch.zeros(1, 8, 8)
    shares[0, 2:4, 4:8] = 1
    fg, offsets = targets(shares)
    pos = positions(8, 8)
    centre = pos[2:4, 4:8].reshape(-1, 2).mean(0)
    assert torch.allclose((pos + offsets[0])[fg[0]], centre.expand(8, 2))
    assert offsets[0][~fg[0]].abs().max() == 0


def test_an_adaptation_step_lowers_the_loss(tmp_path, tiny_net):
    frames, masks = moving_square(4, 96, 128, side=32, step=4)
    s = session(frames, tiny_net)
    anchors = drive(s.anchors(Prompts().add_mask(0, masks[0])), quiet=True)
    samples = drive(s.anchor_samples(anchors), quiet=True)
    assert len(samples) == 4 and all(isinstance(x, Sample) for x in samples)

    def loss(net):
        rng = np.random.default_rng(5)
        with torch.no_grad():
            out = net(torch.cat([net.projected(_emb(s, x), [0]) for x in samples]))
            return float(losses(out, torch.stack([x.shares for x in samples]), None, "lse", rng))

    s.method.params.adapt_steps, s.method.params.adapt_seconds = 60, 60.0
    tuned = drive(s.adapt(s.net, samples), quiet=True)
    assert loss(tuned) < 0.9 * loss(s.net)
    assert all(not p.requires_grad for p in tuned.parameters())


def _emb(s, sample):
    from napari_vosembed.engine.nets.lse import crop_embeddings
    from napari_vosembed.engine.zoom import CROP_SIZE

    return crop_embeddings(sample.levels, CROP_SIZE, s.settings)


def test_box_pseudo_labels_are_background_outside_the_box_and_unknown_below_the_threshold(tiny_net):
    frames, _ = moving_square(2, 96, 128, side=32, step=4)
    s = session(frames, tiny_net)
    from napari_vosembed.engine.zoom import search_box
    from napari_vosembed.methods.lse import Anchor

    anchor = Anchor((32, 16, 64, 48))
    search = search_box(anchor.box, (96, 128), 1.5)
    _, levels = s.crop_levels(s._frame(0), search)
    sample = s.pseudo_labels(levels, search, anchor)
    # the box is the middle two thirds of the crop: outside it every cell is known background; inside
    # it the cells the network gives >= 0.6 are foreground, the others unknown
    centres = (np.arange(GRID) + 0.5) / GRID
    band = (centres >= 1 / 6) & (centres < 5 / 6)
    inside = band[:, None] & band[None]
    confident = s.predict(s.net, levels) >= 0.6
    assert np.array_equal(sample.known.numpy(), ~inside | confident)
    assert np.array_equal(sample.shares.numpy() > 0, inside & confident)


def test_lse_is_registered_tracks_several_boxes_and_reports_their_boxes(tiny_net):
    cls = available_methods()["lse"]
    assert cls.propagates and cls.needs_prompts
    frames, masks = moving_square(6, 96, 160, side=24, step=4)
    s = session(frames, tiny_net, adapt_steps=3)
    prompts = Prompts().add_box(0, 36, 12, 60, 36, label=1).add_box(0, 0, 120, 20, 150, label=2)
    out = drive(s.segment(prompts), quiet=True)
    assert out.shape == masks.shape
    # on the annotated frame nothing lies outside the boxes
    inside = np.zeros(masks.shape[1:], bool)
    inside[36:60, 12:36] = inside[0:20, 120:150] = True
    assert not out[0][~inside].any()
    assert set(s.boxes) == {1, 2} and s.boxes[1].shape == (6, 4)
    assert s.confidence.shape == (6,) and np.isfinite(s.confidence).all()
    boxes = {v: b.copy() for v, b in s.boxes.items()}
    stored = zarr.create_array(zarr.storage.MemoryStore(), shape=out.shape, chunks=(1, *out.shape[1:]), dtype="uint8")
    assert drive(s.segment(prompts, out=stored), quiet=True) is stored  # the labels written frame by frame
    assert np.array_equal(stored[:], out) and all(np.array_equal(s.boxes[v], boxes[v], equal_nan=True) for v in boxes)
    with pytest.raises(PromptError, match="frame 3 has no box"):
        drive(s.segment(prompts, start=3, direction=1), quiet=True)
    one_way = drive(s.segment(prompts, start=0, direction=1), quiet=True)
    assert one_way.shape == masks.shape


def test_lse_refuses_prompts_without_an_object(tiny_net):
    frames, masks = moving_square(3, 96, 128, side=24, step=4)
    s = session(frames, tiny_net)
    with pytest.raises(PromptError, match="draw a box"):
        drive(s.segment(Prompts().add_point(0, 40, 40, 1)), quiet=True)


def test_frame_boxes_are_the_tight_boxes_of_the_labels_present():
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:9] = 1
    labels[6:8, 0:2] = 3
    assert frame_boxes(labels) == {1: (2, 3, 5, 9), 3: (6, 0, 8, 2)}


def test_the_prescan_adapts_again_on_the_first_pass_pseudo_labels(tiny_net):
    frames, _ = moving_square(5, 96, 160, side=24, step=4)
    s = session(frames, tiny_net, adapt_steps=2, prescan=True)
    stages, gen = [], s.segment(Prompts().add_box(0, 36, 12, 60, 36))
    while True:
        try:
            stages.append(next(gen).stage)
        except StopIteration as stop:
            out = stop.value
            break
    order = [stage for i, stage in enumerate(stages) if i == 0 or stages[i - 1] != stage]
    assert order == ["adaptation crops", "adaptation", "pre-scan", "adaptation", "tracking"]
    assert out.shape == frames.shape[:3]
    # the adapted network is kept for the same boxes: a second run goes straight to tracking
    again = [p.stage for p in s.segment(Prompts().add_box(0, 36, 12, 60, 36))]
    assert set(again) == {"tracking"}
