from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from napari_vosembed.engine.cache import EmbeddingSettings, Embeddings
from napari_vosembed.io import as_video
from napari_vosembed.errors import MethodError, ModelFileError, PromptError, VosEmbedError
from napari_vosembed.methods import segment
from napari_vosembed.engine.grid import cell_shares, grid_positions
from napari_vosembed.engine.pml_index import PMLIndex
from napari_vosembed.engine.propagation import (
    SIGMA_DISTANT,
    SIGMA_RECENT,
    propagate,
    propagate_dense,
    sample_references,
    with_positions,
)
from napari_vosembed.methods.tvos import ADAPT_CONFIDENCE, GLOBAL_MATCHING, TVOS, TVOSPropagator, seed_masks
from napari_vosembed.engine.nets.pml import PMLHead
from napari_vosembed.engine.nets.tvos import TVOSHead
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)
RED, GREEN, YELLOW, BLUE = (220, 30, 30), (30, 200, 40), (230, 220, 40), (30, 40, 210)


def scene(n=8, size=(64, 96), squares=((RED, 12, 20),), side=20, seed=0, texture=0.0):
    """Blue background with noise (and a smooth colour texture of amplitude `texture`); each
    (colour, y, x) square slides right by 3 px per frame."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, *size, 3), np.uint8)
    masks = np.zeros((n, *size), np.int32)
    pattern = cv2.GaussianBlur(rng.normal(0, 1, (*size, 3)).astype(np.float32), (0, 0), 6)
    pattern *= texture / pattern.std()
    for t in range(n):
        frame = np.empty((*size, 3), np.float32)
        frame[:] = BLUE + pattern
        for obj, (colour, y, x) in enumerate(squares, 1):
            x0 = x + 3 * t
            frame[y : y + side, x0 : x0 + side] = colour
            masks[t, y : y + side, x0 : x0 + side] = obj
        frames[t] = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    return frames, masks


def colour_embeddings(frames, stride=4) -> Embeddings:
    """Raw embeddings made of each cell's mean colour."""
    n, height, width = frames.shape[:3]
    cells = np.stack([cv2.resize(f.astype(np.float32) / 255, (width // stride, height // stride),
                                 interpolation=cv2.INTER_AREA) for f in frames])
    features = np.concatenate([cells, np.full((*cells.shape[:3], 1), 0.2, np.float32)], -1).astype(np.float16)
    settings = EmbeddingSettings(backbone="colour", scale=1.0, levels=(stride,), saliency_stride=0)
    return Embeddings(Path("unused"), settings, (height, width), {stride: features}, None, np.ones(n, bool))


def session(frames, stride=4, global_matching=0.0, **options):
    """A session on colour embeddings: propagation in isolation (and PML on the same embeddings
    when `global_matching` > 0)."""
    video, emb = as_video(frames), colour_embeddings(frames, stride)
    matcher = PMLIndex(video, emb, None, torch.device("cpu")) if global_matching else None
    options.setdefault("temperature", 0.05)
    return TVOSPropagator(video, emb, None, torch.device("cpu"), matcher=matcher, global_matching=global_matching,
                       **options)


def test_reference_frames_are_dense_in_the_recent_past_and_sparse_further_back():
    assert sample_references(1) == [(1, SIGMA_RECENT)]
    assert [d for d, _ in sample_references(9)] == list(range(1, 10))
    for step in (10, 23, 40, 41, 500):
        refs = sample_references(step)
        distances = [d for d, _ in refs]
        assert len(refs) == 9 and len(set(distances)) == 9
        assert distances[:4] == [1, 2, 3, 4] and max(distances) == min(step, 40)
        assert [s for _, s in refs] == [SIGMA_RECENT] * 4 + [SIGMA_DISTANT] * 5
        gaps = np.diff(distances[4:])
        assert gaps.max() - gaps.min() <= 1  # evenly spread
    assert sample_references(41) == sample_references(40)


def test_the_spatial_prior_is_a_gaussian_of_the_distance_on_the_grid():
    grid, sigma = (7, 9), 3.0
    n = grid[0] * grid[1]
    same = torch.nn.functional.normalize(torch.ones(n, 4), dim=-1)  # every pixel alike: only the prior counts
    labels = torch.zeros(1, n, 2)
    labels[0, :, 0] = 1
    source = 3 * 9 + 4
    labels[0, source] = torch.tensor([0.0, 1.0])
    out = propagate_dense(same, same[None], labels, torch.tensor([sigma]), grid, 10.0)
    pos = grid_positions(grid)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    expected = torch.exp(-d2[:, source] / sigma**2) / torch.exp(-d2 / sigma**2).sum(1)
    assert torch.allclose(out[:, 1], expected, atol=1e-6)
    # the fused product of the fast path gives the same exponent: s q.k - |p_q - p_k|^2 / sigma^2
    q, k = with_positions(same[:3], same[:5], pos[:3], pos[:5], torch.full((5,), sigma**-2), 10.0)
    assert torch.allclose(q @ k.T, 10.0 - d2[:3, :5] / sigma**2, atol=1e-4)


def test_soft_first_frame_labels_are_the_area_shares_of_each_cell():
    labels = np.zeros((8, 8), np.int32)
    labels[:, :2] = 7
    shares = cell_shares(labels, np.array([0, 7]), (2, 2), 4.0)
    assert np.allclose(shares, [[0.5, 0.5], [1, 0], [0.5, 0.5], [1, 0]])


def test_all_objects_propagate_together():
    frames, masks = scene(n=8, size=(96, 144), squares=((RED, 8, 4), (GREEN, 56, 40), (YELLOW, 10, 90)), side=28)
    labels = drive(session(frames).run({0: masks[0]}), quiet=True)
    assert labels.shape == masks.shape
    for t in range(1, 8):
        for obj in (1, 2, 3):
            assert db_eval_iou(masks[t] == obj, labels[t] == obj) > 0.8


def test_a_look_alike_entering_far_from_the_object_stays_background():
    frames, masks = scene(n=8, size=(64, 160))
    frames[3:, 12:32, 130:150] = frames[0, 12:32, 12:32]
    unchecked = drive(session(frames, stray_distance=0).run({0: masks[0]}), quiet=True)
    assert (unchecked[3:, 22, 140] == 1).any()
    labels = drive(session(frames).run({0: masks[0]}), quiet=True)
    assert (labels[:, 12:32, 130:150] == 0).all()
    for t in range(1, 8):
        assert db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.8
    with pytest.raises(MethodError, match="stray_distance must be 0 \\(off\\) or more grid cells, not -2"):
        TVOS.Params(stray_distance=-2)


def test_propagation_runs_forward_and_backward_from_a_middle_frame():
    frames, masks = scene(n=9)
    labels = drive(session(frames).run({4: masks[4]}), quiet=True)
    assert np.array_equal(labels[4], masks[4])
    for t in range(9):
        assert db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.85


def test_every_annotated_frame_keeps_its_mask_and_stays_a_reference():
    frames, masks = scene(n=8, size=(96, 144), squares=((RED, 8, 4), (GREEN, 56, 40)), side=28)
    background, _ = scene(n=8, size=(96, 144), squares=(), seed=1)
    late = (masks == 2) & (np.arange(8) < 4)[:, None, None]  # the green square enters on frame 4
    frames[late], masks[late] = background[late], 0
    s = session(frames)
    labels = drive(s.run({0: masks[0], 6: masks[6]}), quiet=True)
    assert np.array_equal(labels[6], masks[6])
    assert s.references(4, 4, 1, [0, 6])[-1] == (6, SIGMA_DISTANT)
    for t in range(4, 8):  # frames 4 and 5 find the green square through frame 6
        assert db_eval_iou(masks[t] == 2, labels[t] == 2) > 0.8
    assert not (labels[:4] == 2).any()


def textured_session(n=14, grid=(36, 60), objects=((4, 4, 10), (20, 28, 10), (6, 36, 8)), stride=4, dim=16,
                     noise=0.3, seed=0, **options):
    """A session on synthetic embeddings like a trained head's: a smooth random field for the
    background and one per object (squares of (y, x, side) cells moving right by a cell per frame),
    plus noise. Returns the session and the full-resolution masks."""
    rng = np.random.default_rng(seed)

    def field(shape, blur):
        f = cv2.GaussianBlur(rng.normal(0, 1, (*shape, dim)).astype(np.float32), (0, 0), blur)
        return f / np.linalg.norm(f, axis=-1, keepdims=True)

    h, w = grid
    features, masks = np.empty((n, h, w, dim), np.float32), np.zeros((n, h * stride, w * stride), np.int32)
    textures = [field((side, side), 2) for _, _, side in objects]
    features[:] = field(grid, 3)
    for t in range(n):
        for obj, ((y, x, side), texture) in enumerate(zip(objects, textures), 1):
            features[t, y : y + side, x + t : x + t + side] = texture
            masks[t, y * stride : (y + side) * stride, (x + t) * stride : (x + t + side) * stride] = obj
    features += noise * rng.normal(0, 1, features.shape) / np.sqrt(dim)
    settings = EmbeddingSettings(backbone="synthetic", scale=1.0, levels=(stride,), saliency_stride=0)
    emb = Embeddings(Path("unused"), settings, masks.shape[1:], {stride: features.astype(np.float16)}, None,
                     np.ones(n, bool))
    options.setdefault("temperature", 0.05)
    return TVOSPropagator(as_video(np.zeros(masks.shape, np.uint8)), emb, None, torch.device("cpu"), **options), masks


def test_the_fast_path_agrees_with_the_dense_affinity():
    dense, masks = textured_session(fast=False)
    dense_labels = drive(dense.run({0: masks[0]}), quiet=True)
    fast, _ = textured_session()
    fast_labels = drive(fast.run({0: masks[0]}), quiet=True)
    assert np.mean(fast_labels == dense_labels) > 0.999
    # the same inputs to both: at 36 x 60 cells the fast path weighs 129 of the 1,215 reference blocks
    worst, agree = 0.0, []
    for t in range(1, len(masks)):
        refs = dense.references(t, t, 1, [0])
        keys = torch.stack([dense.frame_embedding(r) for r, _ in refs])
        ref_labels = torch.stack([dense.reference_labels(r) for r, _ in refs])
        sigmas = torch.tensor([s for _, s in refs])
        args = (dense.frame_embedding(t), keys, ref_labels, sigmas, dense.grid, dense.scale)
        a, b = propagate_dense(*args), propagate(*args)
        worst = max(worst, float((a - b).abs().max()))
        agree.append(float((a.argmax(1) == b.argmax(1)).float().mean()))
    print(f"fast vs dense: max label-probability difference {worst:.3f}, argmax agreement >= {min(agree):.4f}")
    assert min(agree) > 0.999 and worst < 0.2


def test_the_head_applied_per_level_equals_the_head_on_the_combined_features():
    frames, _ = scene(n=3)
    s = drive(TVOSPropagator.open(frames, head=None, device="cpu", settings=TINY), quiet=True)
    head = TVOSHead(s.embeddings.channels, dim=8, hidden=16).eval()
    with torch.no_grad():
        whole = head(s.embeddings.frame_features(2))
        assert torch.allclose(head.embed(s.embeddings, [2])[0], whole, atol=1e-5)
        assert torch.allclose(head.embed(s.embeddings, [2], 3, 5, 6)[0], whole[3:9, 5:11], atol=1e-5)


def test_a_saved_head_loads_with_its_settings(tmp_path):
    head = TVOSHead(48, dim=8, hidden=16, temperature=0.07)
    head.save(tmp_path / "h.pt", TINY, {"steps": 1})
    loaded, settings = TVOSHead.load(tmp_path / "h.pt")
    assert settings == TINY and loaded.scale == pytest.approx(1 / 0.07)
    blob = torch.load(tmp_path / "h.pt", weights_only=False)
    del blob["settings"]["features"]
    torch.save(blob, tmp_path / "old.pt")
    assert TVOSHead.load(tmp_path / "old.pt")[1].features == "decoder", "a file from before the setting"


def test_propagation_without_an_object_is_refused():
    frames, masks = scene(n=3)
    with pytest.raises(PromptError, match="no prompts"):
        segment(frames, Prompts(), method="tvos", device="cpu")
    with pytest.raises(PromptError, match="no object"):
        segment(frames, Prompts().add_mask(0, np.zeros_like(masks[0])), method="tvos", device="cpu")
    with pytest.raises(PromptError, match="paint a mask"):
        drive(session(frames).run({}), quiet=True)


def test_propagating_forward_or_backward_labels_only_that_side_of_the_start():
    frames, masks = scene(n=9)
    s = session(frames)
    forward = drive(s.propagate({4: masks[4]}, 4, 1), quiet=True)
    assert not forward[:4].any() and np.array_equal(forward[4], masks[4])
    backward = drive(s.propagate({4: masks[4], 8: masks[8]}, 4, -1), quiet=True)
    assert not backward[5:].any()
    for t in range(5, 9):
        assert db_eval_iou(masks[t] == 1, forward[t] == 1) > 0.85
    for t in range(4):  # frame 8, far on the right, stays a reference: a slightly lower bar
        assert db_eval_iou(masks[t] == 1, backward[t] == 1) > 0.8
    with pytest.raises(PromptError, match=r"frame 2, which has no annotation.*annotated frames: 4"):
        drive(s.propagate({4: masks[4]}, 2, 1), quiet=True)


def test_clicks_seed_the_propagation_through_pml():
    """Clicks alone: PML's session labels the clicked frame, TVOS carries it through the video (raw
    features for both, so the test needs no trained head)."""
    from napari_vosembed.methods.pml import PML

    frames, masks = scene(n=6, size=(96, 128), side=32)
    prompts = Prompts().add_point(2, 28, 40, 1).add_point(2, 80, 110, 0)
    s = session(frames)
    matcher = drive(PML(device="cpu", head="none").open_session(frames, settings=TINY), quiet=True)
    run, stages = seed_masks(prompts, matcher), []
    with pytest.raises(StopIteration) as done:
        while True:
            stages.append(next(run).stage)
    seeds = done.value.value
    assert "anchor graph" in stages  # PML's label propagation from the clicks, with its progress
    assert list(seeds) == [2] and db_eval_iou(masks[2] == 1, seeds[2] == 1) > 0.7
    labels = drive(s.propagate(seeds, 2, 1), quiet=True)
    assert not labels[:2].any()
    assert min(db_eval_iou(masks[t] == 1, labels[t] == 1) for t in range(3, 6)) > 0.6


def test_tvos_is_registered_requires_pml_and_propagates_one_way_through_its_session():
    from napari_vosembed.methods import available_methods
    from napari_vosembed.methods.pml import PMLSession

    cls = available_methods()["tvos"]
    assert cls.propagates and cls.requires == ("pml",) and list(available_methods())[0] == "pml"
    frames, masks = scene(n=5)
    prompts = Prompts().add_mask(1, masks[1])
    tvos = cls(device="cpu", head="none")
    assert tvos.required()["pml"].params.head == "none"  # raw features beside raw features
    assert cls(device="cpu").required()["pml"].params.head == "default"  # the shipped PML head beside TVOS's
    session = drive(tvos.open_session(frames, settings=TINY), quiet=True)
    assert isinstance(session.matcher, PMLSession)  # opened for it, as the method requires
    out = drive(session.segment(prompts, start=1, direction=1), quiet=True)
    assert not out[0].any() and db_eval_iou(masks[4] == 1, out[4] == 1) > 0.5
    with pytest.raises(MethodError, match="direction is"):
        drive(session.segment(prompts, start=1, direction=2), quiet=True)
    with pytest.raises(MethodError, match="does not answer frame by frame"):
        session.predict_frame(prompts, 2)


def test_a_damaged_head_file_is_refused_clearly(tmp_path):
    bad = tmp_path / "head.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match=r"head.pt is not a TVOS head file"):
        TVOSHead.load(bad)
    with pytest.raises(ModelFileError, match="vosembed train tvos"):
        TVOSHead.load(tmp_path / "missing.pt")


def test_the_benchmark_times_both_paths_on_the_same_inputs():
    from napari_vosembed.benchmarks.tvos import fast_vs_dense

    s, masks = textured_session(n=6)
    drive(s.run({0: masks[0]}), quiet=True)
    timing = fast_vs_dense(s, [4, 5], "cpu")
    assert timing["frames"] == [4, 5] and timing["fast_s"] > 0 and timing["dense_s"] > 0
    assert timing["argmax_agreement_min"] > 0.999 and timing["max_probability_difference"] < 0.2


def test_the_drift_diagnostic_keeps_the_ground_truth_of_every_predicted_frame_as_history():
    from napari_vosembed.benchmarks.tvos import GroundTruthHistory

    frames, masks = scene(n=6)
    frames[3:][masks[3:] == 1] = GREEN  # the object turns green: frame 3 is lost, and then every later one
    video, emb = as_video(frames), colour_embeddings(frames, 4)
    plain = session(frames)
    diagnostic = GroundTruthHistory(video, emb, None, torch.device("cpu"), temperature=0.05)
    diagnostic.truth = list(masks)
    drifting = drive(plain.run({0: masks[0]}), quiet=True)
    labels = drive(diagnostic.run({0: masks[0]}), quiet=True)
    for t in range(1, 6):
        shares = cell_shares(masks[t], diagnostic.values, diagnostic.grid, diagnostic.stride)
        assert torch.equal(diagnostic.labels[t], torch.from_numpy(shares))
    for t in (4, 5):
        assert db_eval_iou(masks[t] == 1, drifting[t] == 1) < 0.1 and db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.9


def test_global_matching_blends_the_propagated_labels_with_pml_votes_over_the_annotated_masks():
    """p_t = (1 - lambda) p_TVOS + lambda p_PML, p_PML the k = 5 vote over the annotated frame's
    mask, computed for the cells whose label it can change: the labels of blending every cell."""
    frames, masks = scene(n=6, squares=((RED, 12, 20), (GREEN, 36, 50)))
    blended, plain = session(frames, global_matching=0.3, temperature=0.13), session(frames, temperature=0.13)
    labels = drive(blended.run({0: masks[0]}), quiet=True)
    drive(plain.run({0: masks[0]}), quiet=True)
    for obj in (1, 2):
        assert min(db_eval_iou(masks[t] == obj, labels[t] == obj) for t in range(1, 6)) > 0.85
    assert 0 < blended.match_counts[0] < blended.match_counts[1] == 5 * blended.grid[0] * blended.grid[1]
    refs = blended.references(5, 5, 1, [0])
    votes, values, _ = PMLIndex(blended.video, blended.embeddings, None, torch.device("cpu")).with_prompts(
        Prompts().add_mask(0, masks[0])).frame_scores(5, 5)
    assert list(values) == [0, 1, 2]
    alone = plain.frame_scores(5, refs, blended.labels)
    everywhere = 0.7 * alone + 0.3 * torch.from_numpy(votes.reshape(-1, 3))
    result = blended.frame_scores(5, refs, blended.labels)
    top = alone.topk(2, dim=1).values
    uncertain = top[:, 0] - top[:, 1] < 0.3 / 0.7
    assert uncertain.any() and not uncertain.all()
    assert torch.allclose(result[uncertain], everywhere[uncertain], atol=1e-6)
    assert torch.equal(result[~uncertain], alone[~uncertain])
    assert torch.equal(result.argmax(1), everywhere.argmax(1))


def test_an_adapted_matcher_takes_the_confident_cells_of_the_last_five_frames_and_drops_them_after_the_pass():
    frames, masks = scene(n=9, squares=((RED, 12, 20), (GREEN, 36, 50)))
    adapted = session(frames, global_matching=0.3, temperature=0.13, adapt_matcher=True)
    plain = session(frames, global_matching=0.3, temperature=0.13)
    drive(plain.run({0: masks[0]}), quiet=True)
    first = plain.frame_scores(1, plain.references(1, 1, 1, [0]), plain.labels).max(1)
    confident = (first.values >= ADAPT_CONFIDENCE).numpy()
    assert 0.5 < confident.mean() < 1
    run, kept = adapted.run({0: masks[0]}), []
    with pytest.raises(StopIteration) as done:
        while True:
            if next(run).done == 1:  # the annotated frame, before any propagation
                continue
            pool = adapted._global.pool
            kept.append(sorted({-1 - int(g) for g in pool.groups if g < 0}))  # the frames adapted from
            if len(kept) == 1:  # frame 1: its confident cells, with the labels propagation gave them
                assert np.array_equal(pool.labels[pool.groups == -2], first.indices.numpy()[confident])
    assert kept == [list(range(max(1, t - 4), t + 1)) for t in range(1, 9)]
    assert len(adapted._global.pool) == adapted.grid[0] * adapted.grid[1]  # the mask of frame 0 only
    for obj in (1, 2):
        assert min(db_eval_iou(masks[t] == obj, done.value.value[t] == obj) for t in range(1, 9)) > 0.8


def test_the_matcher_head_is_fine_tuned_on_the_masks_before_propagating():
    """A trained matcher head is first fine-tuned on the annotated masks (progress "training"),
    as a copy: the matcher and its head stay as they were; 0 steps (the default), or raw features,
    skip it."""
    frames, masks = scene(n=5, squares=((RED, 12, 20), (GREEN, 36, 50)))
    video, emb = as_video(frames), colour_embeddings(frames)
    torch.manual_seed(0)
    head = PMLHead(emb.channels, dim=8, hidden=16).eval().requires_grad_(False)
    weights = [p.clone() for p in head.parameters()]
    matcher = PMLIndex(video, emb, head, torch.device("cpu"))

    def run(s, annotated=None):
        gen, stages = s.run(annotated or {0: masks[0]}), []
        with pytest.raises(StopIteration) as done:
            while True:
                stages.append(next(gen).stage)
        return stages, done.value.value

    options = dict(temperature=0.13, matcher=matcher, global_matching=0.3)
    tuned = TVOSPropagator(video, emb, None, torch.device("cpu"), finetune_steps=20, **options)
    stages, labels = run(tuned)
    assert stages[:20] == ["training"] * 20 and set(stages[20:]) == {"propagation"}
    assert tuned._global.head is not head and len(tuned._global.finetune_history) == 1
    assert not np.array_equal(tuned._global.frame_embeddings(1), matcher.frame_embeddings(1))
    assert all(torch.equal(a, b) for a, b in zip(weights, head.parameters()))
    assert len(matcher.pool) == 0
    for obj in (1, 2):
        assert min(db_eval_iou(masks[t] == obj, labels[t] == obj) for t in range(1, 5)) > 0.8
    tuned_matcher = tuned._tuned[1]
    again, _ = run(tuned)  # the same masks again: no second fine-tuning, a fresh pool of them
    assert "training" not in again and tuned._tuned[1] is tuned_matcher
    assert tuned._global is not tuned_matcher and tuned._global.head is tuned_matcher.head
    assert len(tuned._global.pool) == len(tuned_matcher.pool)
    other, _ = run(tuned, {1: masks[1]})  # other masks: tuned anew
    assert other.count("training") == 20 and tuned._tuned[1] is not tuned_matcher
    untuned = TVOSPropagator(video, emb, None, torch.device("cpu"), **options)
    assert "training" not in run(untuned)[0] and untuned._global.head is head
    raw = session(frames, global_matching=0.3)  # raw features: nothing to fine-tune
    assert "training" not in run(raw)[0]
    with pytest.raises(MethodError, match="finetune_steps must be 0 \\(off\\) or more, not -2"):
        TVOS.Params(finetune_steps=-2)
    with pytest.raises(MethodError, match="finetune_steps changes the global matcher, which global_matching=0 turns "
                                          "off: set global_matching above 0, or finetune_steps 0"):
        TVOS.Params(global_matching=0, finetune_steps=10)


def test_the_session_opens_its_pml_matcher_on_the_same_grid():
    frames, _ = scene(n=3)
    s = drive(TVOSPropagator.open(frames, head=None, device="cpu", settings=TINY), quiet=True)
    assert s.global_matching == GLOBAL_MATCHING and s.matcher.grid == s.grid
    assert drive(TVOSPropagator.open(frames, head=None, device="cpu", settings=TINY, global_matching=0),
                 quiet=True).matcher is None
    shared = drive(TVOSPropagator.open(frames, head=None, device="cpu", settings=TINY, matcher=s.matcher), quiet=True)
    assert shared.matcher is s.matcher  # an open PML session on the same features is shared, not reopened
    other = PMLIndex(as_video(frames), colour_embeddings(frames), None, torch.device("cpu"))
    own = drive(TVOSPropagator.open(frames, head=None, device="cpu", settings=TINY, matcher=other), quiet=True)
    assert own.matcher is not other and own.matcher.embeddings.settings == own.embeddings.settings  # its own
    longer, _ = scene(n=5)
    elsewhere = PMLIndex(as_video(longer), colour_embeddings(longer), None, torch.device("cpu"))
    with pytest.raises(VosEmbedError, match=r"PML matcher is of another video \(5 frames of 64x96, not 3 of 64x96\)"):
        TVOSPropagator(as_video(frames), colour_embeddings(frames), None, torch.device("cpu"), matcher=elsewhere)
    coarse = PMLIndex(as_video(frames), colour_embeddings(frames, stride=8), None, torch.device("cpu"))
    with pytest.raises(VosEmbedError, match=r"PML embeddings \(8x12 cells\) and the TVOS embeddings \(16x24\)"):
        TVOSPropagator(as_video(frames), colour_embeddings(frames), None, torch.device("cpu"), matcher=coarse)
    with pytest.raises(MethodError, match=r"global_matching must lie in \[0, 1\], not 1.5"):
        session(frames, global_matching=1.5)
    with pytest.raises(MethodError, match=r"global_matching must lie in \[0, 1\], not -0.1"):
        segment(frames, Prompts().add_point(0, 20, 30, 1), method="tvos", device="cpu", global_matching=-0.1)
    with pytest.raises(MethodError, match="adapt_matcher changes the global matcher, which global_matching=0 turns off"):
        segment(frames, Prompts().add_point(0, 20, 30, 1), method="tvos", device="cpu", global_matching=0,
                adapt_matcher=True)
    with pytest.raises(MethodError, match="adapt_matcher changes the global matcher"):
        session(frames, global_matching=0, adapt_matcher=True)


def test_on_a_device_the_labels_are_refined_there_and_the_matcher_votes_there(monkeypatch):
    """The GPU path (refinement by `TorchGuidedFilter`, the matcher's votes kept as tensors), run on
    the CPU: the labels, confidences and adapted references of the OpenCV path."""
    frames, masks = scene(n=9, squares=((RED, 12, 20), (GREEN, 36, 50)), texture=20)
    options = dict(global_matching=0.3, temperature=0.13, adapt_matcher=True)
    host = session(frames, **options)
    expected = drive(host.run({0: masks[0]}), quiet=True)
    monkeypatch.setattr("napari_vosembed.methods.tvos.refine_device", lambda device: torch.device(device))
    monkeypatch.setattr("napari_vosembed.engine.pml_index.refine_device", lambda device: torch.device(device))
    device = session(frames, **options)
    assert device._refiner.device == torch.device("cpu") and device.matcher._refiner.device is not None
    assert np.array_equal(drive(device.run({0: masks[0]}), quiet=True), expected)
    assert np.array_equal(device.confidence, host.confidence)
    assert device.match_counts == host.match_counts and host.match_counts[0] > 0
    for obj in (1, 2):
        assert min(db_eval_iou(masks[t] == obj, expected[t] == obj) for t in range(1, 9)) > 0.8
