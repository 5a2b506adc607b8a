import numpy as np
import pytest
import torch
import zarr
import torch.nn.functional as F

from napari_vosembed.engine.cache import EmbeddingSettings, embed_video
from napari_vosembed.engine.deform import deform_mask
from napari_vosembed.engine.nets.masktrack import DEFAULT_NET, MaskTrackNet
from napari_vosembed.errors import PromptError
from napari_vosembed.methods import available_methods, get_method, masktrack
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import sample_clip
from napari_vosembed.training.masktrack import shares

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)


@pytest.fixture
def clip():
    return sample_clip(6, 64, 96)


@pytest.fixture
def tiny_net(tmp_path, clip):
    """An untrained network on the tiny test backbone, saved as a network file."""
    emb = drive(embed_video(clip[0], TINY), quiet=True)
    torch.manual_seed(0)
    path = tmp_path / "masktrack.pt"
    MaskTrackNet(emb.channels, hidden=16).save(path, TINY, {})
    return path


def session(frames, network, **params):
    return drive(get_method("masktrack")(device="cpu", network=str(network), prompt_model="none",
                                         **params).open_session(frames), quiet=True)


def loss(net, s, mask, seed=1):
    rng, emb = np.random.default_rng(seed), s.features["frames"]
    values = []
    with torch.no_grad():
        for _ in range(8):
            rough = torch.from_numpy(shares(deform_mask(mask, rng), emb.grid_shape, emb.settings.stride))[None]
            target = torch.from_numpy(shares(mask, emb.grid_shape, emb.settings.stride))[None]
            values.append(F.binary_cross_entropy_with_logits(net(net.project_frame(emb, 0)[None], rough), target))
    return float(torch.stack(values).mean())


def test_masktrack_is_registered_and_propagates_through_its_session(clip, tiny_net):
    cls = available_methods()["masktrack"]
    assert cls.propagates and cls.needs_prompts
    frames, masks = clip
    s = session(frames, tiny_net, finetune_steps=5)
    out = drive(s.segment(Prompts().add_mask(1, masks[1])), quiet=True)
    assert out.shape == masks.shape and np.array_equal(out[1], masks[1])
    assert s.confidence.shape == (6,) and s.confidence[1] == 1.0 and np.isfinite(s.confidence).all()
    with pytest.raises(PromptError, match="frame 3 has no mask"):
        drive(s.segment(Prompts().add_mask(1, masks[1]), start=3, direction=1), quiet=True)
    one_way = drive(s.segment(Prompts().add_mask(1, masks[1]), start=1, direction=1), quiet=True)
    stored = zarr.create_array(zarr.storage.MemoryStore(), shape=out.shape, chunks=(1, *out.shape[1:]), dtype="uint8")
    drive(s.segment(Prompts().add_mask(1, masks[1]), out=stored), quiet=True)  # the labels written frame by frame
    assert np.array_equal(stored[:], out)
    assert not one_way[0].any()  # frames before the start are left alone


def test_fine_tuning_on_the_annotated_frame_lowers_the_loss_and_is_kept(clip, tiny_net):
    frames, masks = clip
    s = session(frames, tiny_net, finetune_steps=60, finetune_seconds=60.0)
    offline = s.nets["frames"]
    before = loss(offline, s, masks[0] > 0)
    tuned = drive(s.finetuned("frames", {0: masks[0]}), quiet=True)
    assert loss(tuned, s, masks[0] > 0) < before
    assert drive(s.finetuned("frames", {0: masks[0]}), quiet=True) is tuned  # the same masks: no second tuning
    assert offline is not tuned and loss(offline, s, masks[0] > 0) == before  # the offline network is untouched


def test_cancel_during_fine_tuning_keeps_nothing_half_tuned(clip, tiny_net):
    frames, masks = clip
    s = session(frames, tiny_net, finetune_steps=1000, finetune_seconds=600.0)
    gen = s.segment(Prompts().add_mask(0, masks[0]))
    stages = [next(gen).stage for _ in range(3)]
    assert stages == ["fine-tuning"] * 3
    gen.close()  # what a cancelled worker does
    assert s._tuned == {}


def test_a_box_becomes_the_first_mask_through_the_box_network_without_the_prompt_model(clip, tiny_net, monkeypatch):
    monkeypatch.setattr(masktrack, "BOX_NET", tiny_net)  # an untrained network starts from its rough mask: the box
    frames, masks = clip
    s = session(frames, tiny_net, finetune_steps=3)
    ys, xs = np.nonzero(masks[2])
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    first = drive(s.boxes_as_masks(Prompts().add_box(2, *box, label=3)), quiet=True)
    assert not first.boxes and set(first.masks) == {2} and set(np.unique(first.masks[2])) == {0, 3}
    inside = np.zeros(masks[2].shape, bool)
    inside[box[0]:box[2], box[1]:box[3]] = True
    assert not first.masks[2][~inside].any() and (first.masks[2][inside] == 3).mean() > 0.5
    out = drive(s.segment(Prompts().add_box(2, *box, label=3)), quiet=True)
    assert np.array_equal(out[2], first.masks[2]) and out[3].any()
    clicked = Prompts().add_box(2, *box).add_point(2, ys.mean(), xs.mean(), 1)
    assert drive(s.boxes_as_masks(clicked), quiet=True).boxes  # clicks on its frame: the prompt model's job


def test_the_flow_branch_and_the_crf_run_beside_the_frame_branch(clip, tiny_net, monkeypatch):
    monkeypatch.setattr(masktrack, "FLOW_NET", tiny_net)
    frames, masks = clip
    s = session(frames, tiny_net, finetune_steps=3, flow=True, crf=True)
    stages = []
    gen = s.segment(Prompts().add_mask(0, masks[0]))
    try:
        while True:
            stages.append(next(gen).stage)
    except StopIteration as stop:
        out = stop.value
    assert {"optical flow", "embedding", "fine-tuning", "refinement"} <= set(stages)
    assert set(s._tuned) == {"frames", "flow"} and s.flow is not None and out.shape == masks.shape
    assert out[1:].any()


def isnet_cached() -> bool:
    from napari_vosembed.engine.fetch import default_model_path

    return default_model_path().exists()


@pytest.mark.skipif(not DEFAULT_NET.is_file() or not isnet_cached(),
                    reason="needs the trained MaskTrack network and the ISNet backbone (vosembed fetch-models)")
def test_two_annotated_frames_each_carry_their_object_to_the_frames_closest_to_them():
    frames, masks = sample_clip(8, 120, 160)
    first, second = (masks[1] > 0).astype(np.uint8), 2 * (masks[6] > 0).astype(np.uint8)
    s = drive(get_method("masktrack")(device="cpu", prompt_model="none", finetune_steps=20).open_session(frames),
              quiet=True)
    out = drive(s.segment(Prompts().add_mask(1, first).add_mask(6, second)), quiet=True)
    assert np.array_equal(out[1], first) and np.array_equal(out[6], second)
    for t in (0, 2, 3):  # closer to frame 1 than to frame 6: only frame 1's object can be there
        assert set(np.unique(out[t])) <= {0, 1}
    for t in (4, 5, 7):
        assert set(np.unique(out[t])) <= {0, 2}
    assert out[2].any() and out[5].any()  # the neighbours of the annotated frames keep their object
