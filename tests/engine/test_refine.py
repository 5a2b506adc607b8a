import numpy as np

from napari_vosembed.engine import refine
from napari_vosembed.engine.refine import drop_stray_regions

LABELS = np.array([0, 1, 2])


def votes(winners, k=3):
    """(h, w, k) vote fractions: 0.8 for each cell's winning label, the rest shared."""
    scores = np.full((*winners.shape, k), 0.2 / (k - 1), np.float32)
    np.put_along_axis(scores, winners[..., None], 0.8, axis=-1)
    return scores


def test_an_objects_region_far_from_where_it_was_goes_to_the_background():
    previous = np.zeros((12, 30), np.intp)
    previous[4:8, 2:6] = 1
    winners = previous.copy()
    winners[4:8, 3:7] = 1
    winners[2:6, 20:25] = 1
    scores = votes(winners)
    before = scores.copy()
    cleared = drop_stray_regions(scores, previous, label_values=LABELS, distance=4)
    assert np.array_equal(cleared, (winners == 1) & (np.arange(30) >= 20))
    assert (scores.argmax(-1)[cleared] == 0).all()
    assert np.array_equal(scores.argmax(-1)[~cleared], winners[~cleared])
    assert np.allclose(scores.sum(-1), before.sum(-1))
    far_enough = drop_stray_regions(votes(winners), previous, label_values=LABELS, distance=15)
    assert not far_enough.any()


def test_an_object_that_moved_far_keeps_its_strongest_region_and_an_absent_one_is_left_alone():
    previous = np.zeros((12, 30), np.intp)
    previous[1:3, 1:3] = 1
    winners = np.zeros_like(previous)
    winners[6:10, 14:19] = 1
    winners[0:2, 26:28] = 1
    cleared = drop_stray_regions(votes(winners), previous, label_values=LABELS, distance=3)
    assert np.array_equal(cleared, (winners == 1) & (np.arange(30) >= 26))
    absent = drop_stray_regions(votes(winners), np.zeros_like(previous), label_values=LABELS, distance=3)
    assert not absent.any()
    objects_only = votes(winners)
    untouched = objects_only.copy()
    assert not drop_stray_regions(objects_only, previous, label_values=np.array([1, 2, 3]), distance=3).any()
    assert np.array_equal(objects_only, untouched)


def test_each_object_is_held_to_its_own_previous_cells():
    previous = np.zeros((10, 30), np.intp)
    previous[2:5, 2:5] = 1
    previous[2:5, 24:27] = 2
    winners = np.zeros_like(previous)
    winners[2:5, 3:6] = 2
    winners[2:5, 23:26] = 2
    winners[6:9, 3:6] = 1
    scores = votes(winners)
    cleared = drop_stray_regions(scores, previous, label_values=LABELS, distance=3)
    assert np.array_equal(cleared, (winners == 2) & (np.arange(30) < 10))
    assert (scores.argmax(-1)[6:9, 3:6] == 1).all() and (scores.argmax(-1)[2:5, 23:26] == 2).all()


def test_many_labels_are_refined_a_few_at_a_time_with_the_same_labels(monkeypatch):
    rng = np.random.default_rng(3)
    scores = rng.random((12, 16, 9)).astype(np.float32)
    guide = rng.random((96, 128)).astype(np.float32)
    values = np.arange(9) * 3
    whole = refine.refine_labels(scores, values, 8, (96, 128), guide, 4, 1e-3)
    monkeypatch.setattr(refine, "LABEL_CHUNK_BYTES", 2 * 4 * 96 * 128)  # two labels at a time
    assert np.array_equal(refine.refine_labels(scores, values, 8, (96, 128), guide, 4, 1e-3), whole)
    assert len(np.unique(whole)) > 4
