import cv2
import numpy as np
import pytest
import torch

from napari_vosembed.engine.cache import EmbeddingSettings, Embeddings
from napari_vosembed.io import as_video
from napari_vosembed.errors import MethodError, PromptError
from napari_vosembed.engine.grid import cell_labels, grid_coords
from napari_vosembed.engine.pml_index import PMLIndex
from napari_vosembed.methods.pml import PML
from napari_vosembed.engine.nets.pml import PMLHead
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=0)
RED, ORANGE, GREEN, BLUE = (220, 30, 30), (230, 120, 30), (30, 200, 40), (30, 40, 210)


def scene(n=6, size=(64, 96), squares=((RED, 10),), seed=0):
    """Blue background with noise; each (colour, x) square slides right by 2 px per frame."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, *size, 3), np.uint8)
    masks = np.zeros((n, *size), np.int32)
    for t in range(n):
        frame = np.empty((*size, 3), np.float32)
        frame[:] = BLUE
        for obj, (colour, x) in enumerate(squares, 1):
            x0 = x + 2 * t
            frame[20:44, x0 : x0 + 24] = colour
            masks[t, 20:44, x0 : x0 + 24] = obj
        frames[t] = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    return frames, masks


def session(frames, **options):
    return drive(PMLIndex.open(frames, head=None, device="cpu", settings=TINY, **options), quiet=True)


def colour_session(frames, tmp_path, stride=4):
    """A session whose embeddings are the mean colour of each cell: retrieval mechanics in isolation."""
    n, height, width = frames.shape[:3]
    cells = np.stack([cv2.resize(f.astype(np.float32) / 255, (width // stride, height // stride),
                                 interpolation=cv2.INTER_AREA) for f in frames])
    features = np.concatenate([cells, np.full((*cells.shape[:3], 1), 0.2, np.float32)], -1).astype(np.float16)
    settings = EmbeddingSettings(backbone="colour", scale=1.0, levels=(stride,), saliency_stride=0)
    emb = Embeddings(tmp_path, settings, (height, width), {stride: features}, None, np.ones(n, bool))
    return PMLIndex(as_video(frames), emb, None, torch.device("cpu"))


def test_a_click_flips_its_region_in_every_frame(tmp_path):
    frames, masks = scene()
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_point(0, 30, 20, 1).add_point(0, 5, 80, 0))
    labels = drive(s.predict_all(online_adaptation=False), quiet=True)
    assert labels.shape == masks.shape
    for t in range(len(frames)):
        assert db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.85
    assert labels[:, 5, 80].max() == 0 and labels[:, 55, 5].max() == 0


def test_a_negative_click_removes_a_region_and_deleting_it_brings_it_back(tmp_path):
    frames, masks = scene(squares=((RED, 4), (ORANGE, 56)))
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_point(0, 30, 12, 1).add_point(0, 5, 50, 0), group=1)
    before = s.predict_frame(2)
    assert before[30, 66] == 1 and before[30, 14] == 1
    s.add_prompts(Prompts().add_point(0, 30, 64, 0), group=2)
    after = s.predict_frame(2)
    assert after[30, 66] == 0 and after[30, 14] == 1
    assert db_eval_iou(masks[2] == 1, after == 1) > 0.9
    s.remove_group(2)
    assert s.predict_frame(2)[30, 66] == 1
    assert [(p.y, p.x) for p in s.prompts.points] == [(30, 12), (5, 50)]


def test_removing_a_group_removes_its_prompts(tmp_path):
    frames, masks = scene()
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_point(1, 30, 20, 1).add_point(1, 5, 80, 0), group=1)
    s.add_prompts(Prompts().add_mask(0, masks[0]), group=2)
    assert (s.k, s.prompts.frames, s.finetunable) == (5, [0, 1], False)
    s.remove_group(2)
    assert (s.k, s.prompts.frames, list(s.prompts.masks)) == (1, [1], [])
    s.remove_group(1)
    assert s.prompts.is_empty() and len(s.pool) == 0


def test_a_lone_object_click_still_wins_its_region_among_background_clicks(tmp_path):
    frames, masks = scene()
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_point(0, 30, 20, 1).add_point(0, 5, 80, 0).add_point(0, 55, 5, 0).add_point(0, 5, 5, 0))
    assert (s.k_click, s.k) == (3, 1)  # three neighbours would always outvote the single object click
    assert db_eval_iou(masks[2] == 1, s.predict_frame(2) == 1) > 0.85
    s.add_prompts(Prompts().add_point(0, 40, 25, 1))
    assert s.k == 3
    assert db_eval_iou(masks[2] == 1, s.predict_frame(2) == 1) > 0.85
    s.k_click = 1
    assert s.k == 1


def test_clicks_alone_blend_the_vote_with_labels_propagated_over_the_video(tmp_path):
    frames, masks = scene(squares=((RED, 4), (ORANGE, 56)))
    base = colour_session(frames, tmp_path)
    clicks = Prompts().add_point(0, 30, 12, 1).add_point(0, 5, 50, 0).add_point(0, 30, 64, 2)
    s, plain = base.with_prompts(clicks), base.with_prompts(clicks, click_propagation=0)
    assert s.propagating and not plain.propagating and "graph" not in base._graph
    stages = [p.stage for p in s.predict_all(online_adaptation=False)]
    assert stages[:2] == ["anchor graph"] * 2 and "anchor graph" not in stages[2:]
    graph = base._graph["graph"]  # built by the view, kept for every view of the session
    assert base.with_prompts(clicks)._graph["graph"] is graph

    votes, values, _ = plain.frame_scores(3)
    propagated = graph.scores(graph.propagate(s.pool.embeddings, s.pool.labels, values), slice(3 * 384, 4 * 384))
    assert not np.allclose(votes.reshape(-1, 3), propagated, atol=0.05)
    assert np.allclose(s.frame_scores(3)[0], 0.5 * votes + 0.5 * propagated.reshape(votes.shape))
    cells = np.array([0, 100, 383])
    assert np.allclose(s.frame_scores(3, cells=cells)[0], s.frame_scores(3)[0].reshape(-1, 3)[cells])
    labels = s.predict_frame(3)
    for obj in (1, 2):
        assert db_eval_iou(masks[3] == obj, labels == obj) > 0.85

    with_mask = base.with_prompts(Prompts().add_mask(0, masks[0]))
    assert not with_mask.propagating
    assert np.array_equal(with_mask.frame_scores(3)[0],
                          base.with_prompts(Prompts().add_mask(0, masks[0]), click_propagation=0).frame_scores(3)[0])


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_click_propagation_weight_outside_0_to_1_is_refused(tmp_path, weight):
    frames, _ = scene()
    message = rf"click_propagation must lie in \[0, 1\], not {weight}"
    with pytest.raises(MethodError, match=message):
        PML.Params(click_propagation=weight)
    with pytest.raises(MethodError, match="click_propagation"):
        colour_session(frames, tmp_path).with_prompts(Prompts().add_point(0, 30, 20, 1), click_propagation=weight)


def test_segmenting_all_frames_from_clicks_alone_gives_the_previews_labels(tmp_path):
    """Online adaptation needs masks, boxes or scribbles: from clicks alone the pool stays the
    clicks and every frame gets `predict_frame`'s labels (with adaptation, k = 5 gave every object
    cell to the six background clicks, and adapted background cells buried the object click)."""
    frames, masks = scene()
    s = colour_session(frames, tmp_path)
    prompts = Prompts().add_point(0, 30, 20, 1)
    for y, x in ((5, 80), (55, 5), (5, 5), (55, 90), (5, 45), (58, 50)):
        prompts.add_point(0, y, x, 0)
    s.add_prompts(prompts)
    assert (len(s.pool), s.k) == (7, 1)

    def pool_sizes():
        run, sizes = s.predict_all(online_adaptation=True), []
        with pytest.raises(StopIteration) as done:
            while True:
                next(run)
                sizes.append(len(s.pool))
        return sizes, done.value.value

    sizes, labels = pool_sizes()
    assert set(sizes) == {7}
    for t in range(len(frames)):
        assert np.array_equal(labels[t], s.predict_frame(t))
        assert db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.9
    s.add_prompts(Prompts().add_mask(2, masks[2]))  # a mask: the pool grows while segmenting
    assert s.k == 5 and max(pool_sizes()[0]) > len(s.pool)


def test_objects_keep_their_own_labels():
    frames, masks = scene(squares=((RED, 4), (GREEN, 56)))
    s = session(frames)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    labels = drive(s.predict_all(), quiet=True)
    for t in range(len(frames)):
        for obj in (1, 2):
            assert db_eval_iou(masks[t] == obj, labels[t] == obj) > 0.85


def test_votes_of_chosen_cells_are_those_of_the_whole_frame(tmp_path):
    frames, masks = scene(squares=((RED, 4), (GREEN, 56)))
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    whole, values, unanimous = s.frame_scores(3)
    cells = np.array([0, 7, 50, 51, whole.shape[0] * whole.shape[1] - 1])
    some, same_values, some_unanimous = s.frame_scores(3, cells=cells)
    assert some.shape == (len(cells), 3) and list(same_values) == list(values) == [0, 1, 2]
    assert np.array_equal(some, whole.reshape(-1, 3)[cells]) and np.array_equal(some_unanimous, unanimous[cells])


def test_online_adaptation_grows_the_pool_while_propagating():
    frames, masks = scene(n=8)
    s = session(frames)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    initial = len(s.pool)
    sizes = []
    gen = s.predict_all(online_adaptation=True, adapt_per_frame=50, adapt_window=3)
    for _ in gen:
        sizes.append(len(s.pool))
    assert max(sizes) == initial + 3 * 50
    assert len(s.pool) == initial


def test_a_look_alike_entering_far_from_the_object_stays_background(tmp_path):
    frames, masks = scene(n=8, size=(64, 160))
    look_alike = (200, 60, 40)
    frames[3:, 20:44, 130:154] = look_alike
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    unchecked = drive(s.predict_all(stray_distance=0), quiet=True)
    assert (unchecked[3:, 32, 140] == 1).all()
    labels = drive(s.predict_all(), quiet=True)
    assert (labels[:, 20:44, 130:154] == 0).all()
    for t in range(len(frames)):
        assert db_eval_iou(masks[t] == 1, labels[t] == 1) > 0.8
    with pytest.raises(MethodError, match="stray_distance must be 0 \\(off\\) or more grid cells, not -1"):
        PML.Params(stray_distance=-1)


@pytest.mark.parametrize("option", ["adapt_per_frame", "adapt_window"])
def test_adaptation_that_keeps_no_cell_is_refused_naming_the_option(option):
    with pytest.raises(MethodError, match=f"{option} must be at least 1, not 0"):
        PML.Params(**{option: 0})
    frames, masks = scene(n=4)
    s = session(frames)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    before = len(s.pool)
    with pytest.raises(MethodError, match=f"{option} must be at least 1, not 0"):
        drive(s.predict_all(**{option: 0}), quiet=True)
    assert len(s.pool) == before


def test_a_mask_gives_every_cell_unless_capped_and_a_cap_splits_evenly(tmp_path):
    frames, masks = scene(n=2)
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_mask(0, masks[0]))
    assert len(s.pool) == 16 * 24
    capped = s.with_prompts(Prompts().add_mask(0, masks[0]), max_refs_per_frame=60)
    assert len(capped.pool) == 60 and (capped.pool.labels == 1).sum() == 30


def test_references_on_a_later_frame_segment_earlier_frames():
    frames, masks = scene(n=6)
    s = session(frames)
    s.add_prompts(Prompts().add_mask(4, masks[4]))
    labels = drive(s.predict_all(), quiet=True)
    assert db_eval_iou(masks[0] == 1, labels[0] == 1) > 0.8


def test_references_without_an_object_are_refused():
    frames, _ = scene(n=2)
    s = session(frames)
    with pytest.raises(PromptError, match="no reference"):
        s.predict_frame(0)
    s.add_prompts(Prompts().add_point(0, 1, 1, 0))
    with pytest.raises(PromptError, match="no object"):
        s.predict_frame(0)


def test_cell_labels_take_the_majority_of_each_cell():
    labels = np.zeros((16, 16), np.int32)
    labels[:8, :5] = 3
    cells = cell_labels(labels, (2, 2), 8.0)
    assert cells.tolist() == [[3, 0], [0, 0]]


def test_with_prompts_starts_a_fresh_pool_on_shared_embeddings(tmp_path):
    frames, masks = scene()
    s = colour_session(frames, tmp_path)
    s.add_prompts(Prompts().add_point(0, 30, 20, 1).add_point(0, 5, 80, 0))
    view = s.with_prompts(Prompts().add_mask(0, masks[0]), k_mask=3)
    assert view.frame_embeddings(2) is not None and view._pixel_embeddings is s._pixel_embeddings
    assert len(s.pool) == 2 and len(view.pool) > 2 and view.k == 3
    with pytest.raises(TypeError, match="bogus"):
        s.with_prompts(Prompts(), bogus=1)


@pytest.mark.parametrize("members", [1, 3])
def test_the_head_applied_per_level_equals_the_head_on_the_combined_features(members):

    frames, _ = scene(n=3)
    s = drive(PMLIndex.open(frames, head=None, device="cpu", settings=TINY), quiet=True)
    head = PMLHead(s.embeddings.channels, dim=8, hidden=16, members=members).eval()
    with torch.no_grad():
        whole = head(s.embeddings.frame_features(2).reshape(-1, s.embeddings.channels), grid_coords(2, 3, s.grid))
        assert whole.shape[1] == 8 * members
        assert torch.allclose(head.embed(s.embeddings, 2, 3), whole, atol=1e-5)


def test_a_single_head_saved_before_ensembles_loads_as_one_member(tmp_path):
    head = PMLHead(6, dim=8, hidden=16)
    old = {k.replace("nets.0.", "net."): v for k, v in head.state_dict().items()}
    torch.save({"config": {"in_channels": 6, "dim": 8, "hidden": 16}, "settings": TINY.__dict__,
                "state_dict": old, "meta": {}}, tmp_path / "old.pt")
    loaded, settings = PMLHead.load(tmp_path / "old.pt")
    assert settings == TINY and loaded.out_dim == 8
    x, coords = torch.rand(5, 6), torch.rand(5, 3)
    assert torch.equal(loaded(x, coords), head(x, coords))


def random_head_session(frames, refine=False):
    """A session with an untrained (random) head on tiny features: it confuses red and orange."""
    s = session(frames)
    torch.manual_seed(0)
    head = PMLHead(s.embeddings.channels, dim=8, hidden=16).eval().requires_grad_(False)
    return PMLIndex(s.video, s.embeddings, head, torch.device("cpu"), refine=refine)


def test_finetuning_on_the_mask_separates_what_the_head_confused():
    frames, masks = scene(n=6, squares=((RED, 10), (ORANGE, 56)))
    obj = (masks == 1).astype(np.int32)
    s = random_head_session(frames)
    s.add_prompts(Prompts().add_mask(0, obj[0]), group=7)
    weights = [p.clone() for p in s.head.parameters()]
    embedded, pool_size = np.array(s._pixel_embeddings[:]), len(s.pool)
    before = drive(s.predict_all(online_adaptation=False, finetune_steps=0), quiet=True)
    tuned = drive(s.finetuned(100, 1e-2), quiet=True)
    after = drive(tuned.predict_all(online_adaptation=False, finetune_steps=0), quiet=True)
    j = [np.mean([db_eval_iou(obj[t] == 1, labels[t] == 1) for t in range(len(frames))]) for labels in (before, after)]
    assert j[0] < 0.5 and j[1] > 0.85
    assert tuned.finetune_history[-1][1] < tuned.finetune_history[0][1]
    assert len(tuned.pool) == pool_size and not np.array_equal(tuned._pixel_embeddings[:], embedded)
    assert all(torch.equal(a, b) for a, b in zip(weights, s.head.parameters()))
    assert np.array_equal(s._pixel_embeddings[:], embedded) and s.remove_group(7) == pool_size


def test_finetuning_without_a_head_a_mask_or_steps_is_refused():
    frames, masks = scene(n=2)
    s = random_head_session(frames)
    s.add_prompts(Prompts().add_point(0, 30, 20, 1).add_point(0, 5, 80, 0))
    with pytest.raises(PromptError, match="painted masks"):
        drive(s.finetuned(5), quiet=True)
    s.add_prompts(Prompts().add_mask(1, np.zeros(masks[1].shape, np.int32)))
    with pytest.raises(PromptError, match="painted masks with an object and background"):
        drive(s.finetuned(5), quiet=True)
    with pytest.raises(MethodError, match="at least 1 step, not 0"):
        drive(s.finetuned(0), quiet=True)
    with pytest.raises(MethodError, match="trained head"):
        drive(session(frames).finetuned(5), quiet=True)
    with pytest.raises(MethodError, match="finetune_steps must be 0 \\(off\\) or more, not -1"):
        PML.Params(finetune_steps=-1)


def test_a_background_mask_beside_an_object_click_segments_without_finetuning(monkeypatch):
    frames, masks = scene(n=3)
    s = random_head_session(frames)
    s.add_prompts(Prompts().add_point(0, 30, 20, 1).add_mask(2, np.zeros(masks[2].shape, np.int32)))
    monkeypatch.setattr(PMLIndex, "finetuned", lambda *a, **k: pytest.fail("nothing to fine-tune on"))
    labels = drive(s.predict_all(online_adaptation=False), quiet=True)  # was a PromptError from fine-tuning
    assert labels.shape == masks.shape and labels[2].max() == 0


def test_the_torch_search_of_a_gpu_session_labels_as_faiss_does(monkeypatch):
    """A PML session whose pools search with `knn` (what runs on a GPU), here on the CPU: the labels
    of every frame from a mask and from clicks are those of the faiss search."""
    import functools

    from napari_vosembed.engine import pml_index

    frames, masks = scene(n=8, squares=((RED, 10), (GREEN, 50)))
    results = []
    for search in ("faiss", "torch"):
        monkeypatch.setattr(pml_index, "ReferencePool", functools.partial(pml_index.ReferencePool, search=search))
        index = session(frames)
        index.add_prompts(Prompts().add_mask(0, masks[0]))
        assert index.pool.backend == search
        from_mask = drive(index.predict_all(), quiet=True)
        clicks = index.with_prompts(Prompts().add_point(3, 30, 22, 1).add_point(3, 5, 5, 0))
        results.append((from_mask, drive(clicks.predict_all(), quiet=True)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert db_eval_iou(masks[5] == 1, results[1][0][5] == 1) > 0.8


def test_on_a_device_a_clicks_labels_leave_it_only_as_labels(tmp_path, monkeypatch):
    """The GPU path of a click (votes kept as tensors, refined by `TorchGuidedFilter`), run on the
    CPU: the labels of the OpenCV path."""
    frames, masks = scene(squares=((RED, 10), (GREEN, 50)))
    prompts = Prompts().add_point(2, 30, 20, 1).add_point(2, 30, 60, 2).add_point(2, 5, 5, 0)
    expected = colour_session(frames, tmp_path).with_prompts(prompts).predict_frame(4)
    monkeypatch.setattr("napari_vosembed.engine.pml_index.refine_device", lambda device: torch.device(device))
    index = colour_session(frames, tmp_path).with_prompts(prompts)
    scores, values, unanimous = index.frame_scores(4, host=False)
    assert isinstance(scores, torch.Tensor) and isinstance(unanimous, torch.Tensor)
    assert np.array_equal(index.predict_frame(4), expected)
    for obj in (1, 2):
        assert db_eval_iou(masks[4] == obj, expected == obj) > 0.8
