"""The unsupervised method (Li et al. 2018): no prompt, the moving object is found and segmented."""

import numpy as np
import pytest

from napari_vosembed.engine.fetch import default_model_path
from napari_vosembed.methods import available_methods, get_method
from napari_vosembed.methods.unsupervised import FrameSeeds
from napari_vosembed.metrics import db_eval_iou
from napari_vosembed.progress import drive
from napari_vosembed.prompts import Prompts
from napari_vosembed.sample import moving_square

pytestmark = pytest.mark.skipif(not default_model_path().exists(),
                                reason="the ISNet backbone is not cached (run `vosembed fetch-models`)")


@pytest.fixture(scope="module")
def square():
    return moving_square()


def test_the_method_is_registered_and_needs_no_prompt():
    assert "unsupervised" in available_methods()
    assert get_method("unsupervised").needs_prompts is False


@pytest.mark.parametrize("params", [{}, {"cues": "motion", "crf": False}, {"adapt_every": 5}])
def test_a_textured_square_moving_over_a_static_wall_is_found_and_segmented(square, params):
    frames, masks = square
    session = drive(get_method("unsupervised")(device="cpu", seeds=30, **params).open_session(frames),
                    quiet=True)
    labels = drive(session.segment(Prompts()), quiet=True)
    assert labels.shape == masks.shape and set(np.unique(labels)) <= {0, 1}
    j = np.mean([db_eval_iou(masks[t] == 1, labels[t] == 1) for t in range(len(masks))])
    assert j > 0.7, j
    assert set(session.timings) == {"seeds", "tracks", "segmentation", "adaptation", "refinement"}
    assert np.all((session.confidence >= 0) & (session.confidence <= 1))


def test_the_track_follows_the_best_scored_similar_seeds(square):
    frames, _ = square
    session = drive(get_method("unsupervised")(device="cpu").open_session(frames[:3]), quiet=True)
    grid = session.index.grid
    emb = [session.index.frame_embeddings(t) for t in range(3)]
    # seed 1 is the same cell on every frame (similar embeddings) and scores high on two frames of three
    cells = np.array([0, grid[0] * grid[1] // 2, grid[0] * grid[1] - 1])
    scores = [np.array([0.9, 0.8, 0.0]), np.array([0.0, 0.0, 0.9]), np.array([0.2, 0.9, 0.0])]
    seeds = [FrameSeeds(cells, np.zeros(len(e), int), s, np.ones(3), np.zeros(0)) for e, s in zip(emb, scores)]
    chain = session.track(seeds)
    assert chain[0] in (0, 1) and chain[2] == 1 and len(chain) == 3


def test_a_cells_probability_weighs_its_distances_to_the_nearest_object_and_background_seeds(square):
    """Eq. 13-15: p = d_bg / (d_fg + d_bg), each the distance to the nearest seed of its kind."""
    frames, _ = square
    session = drive(get_method("unsupervised")(device="cpu").open_session(frames[:2]), quiet=True)
    emb = session.index.frame_embeddings(1)
    cells = np.array([3, 40, 100, 7])
    p = session.probabilities(session.index, 1, cells, np.array([0, 1]), np.array([2, 3]))
    d = np.linalg.norm(emb[:, None] - emb[cells][None], axis=2)
    expected = d[:, 2:].min(1) / (d[:, :2].min(1) + d[:, 2:].min(1))
    assert p.shape == (*session.index.grid, 2) and np.allclose(p.sum(-1), 1)
    assert np.allclose(p[..., 1].reshape(-1), expected, atol=1e-5)
    assert p[..., 1].reshape(-1)[[3, 40]].min() > 0.999 and p[..., 1].reshape(-1)[[100, 7]].max() < 0.001


def test_the_objectness_of_a_480p_frame_is_read_off_the_whole_frame():
    """ISNet's saliency weighs the whole image: the objectness input is never cut into tiles."""
    from napari_vosembed.methods.unsupervised import OBJECTNESS

    settings = OBJECTNESS.resolve(480, 854)
    assert max(round(480 * settings.scale), round(854 * settings.scale)) <= settings.tile
