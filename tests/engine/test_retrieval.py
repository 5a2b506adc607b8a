import os

import numpy as np

from napari_vosembed.engine import _blas
from napari_vosembed.engine._blas import configure_openblas, cpu_flags, openblas_coretype
from napari_vosembed.engine.refine import (FrameRefiner, colour_guide, gray_guide, guided_filter, invert_symmetric,
                                          refine_frame, refine_labels)
from napari_vosembed.io import as_video
from napari_vosembed.engine.retrieval import ReferencePool
from napari_vosembed.metrics import db_eval_iou


def test_vote_is_the_majority_of_the_k_nearest_and_groups_can_be_removed():
    pool = ReferencePool(2)
    pool.add(np.array([[1, 0], [0.99, 0.14], [0.98, 0.2]]), [1, 1, 0], group=1)
    pool.add(np.array([[0, 1]]), [0], group=2)
    scores, unanimous = pool.vote(np.array([[1.0, 0.0], [0.0, 1.0]]), k=3)
    assert pool.label_values.tolist() == [0, 1]
    assert scores[0].argmax() == 1 and not unanimous[0]
    assert scores[1].argmax() == 0
    assert pool.remove(1) == 3 and len(pool) == 1
    scores, unanimous = pool.vote(np.array([[1.0, 0.0]]), k=5)
    assert pool.label_values.tolist() == [0] and unanimous.all()


def test_guided_filter_keeps_a_constant_and_snaps_coarse_labels_to_edges():
    guide = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 < 18**2
    guide[disk] = 1
    np.testing.assert_allclose(guided_filter(guide, np.full((64, 64), 0.3, np.float32), 4, 1e-3), 0.3, atol=1e-5)
    np.testing.assert_allclose(guided_filter(np.dstack([guide] * 3), np.full((64, 64), 0.3), 4, 1e-3, 2), 0.3, atol=1e-5)
    coarse = np.stack([1 - disk, disk], -1).astype(np.float32)[4::8, 4::8]
    values = np.array([0, 1])
    plain = refine_labels(coarse, values, 8, (64, 64))
    refined = refine_labels(coarse, values, 8, (64, 64), guide=guide, radius=8)
    assert db_eval_iou(disk, refined == 1) > db_eval_iou(disk, plain == 1)
    assert db_eval_iou(disk, refined == 1) > 0.95


def test_the_colour_guide_follows_an_edge_the_gray_one_cannot_see():
    """A red disk on a green background of the same luma: the gray guide is flat, so its labels stay
    the coarse blocks; the colour guide (He et al. 2013, Eq. 13-15) snaps them to the disk, and its
    fast form (coefficients on a 4x subsampled grid, He and Sun 2015) labels as the full one."""
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 45) ** 2 + (xx - 50) ** 2 < 26**2
    red, green = np.array([0.9, 0.1, 0.2]), np.array([0.05, 0.461, 0.57])
    assert abs(gray_guide((red * 255)[None, None], 0, 255) - gray_guide((green * 255)[None, None], 0, 255)) < 0.01
    frame = np.where(disk[..., None], red, green).astype(np.float32)
    coarse = np.stack([1 - disk, disk], -1).astype(np.float32)[4::8, 4::8]
    values = np.array([0, 1])
    plain = refine_labels(coarse, values, 8, (96, 96))
    gray = refine_labels(coarse, values, 8, (96, 96), guide=gray_guide(frame * 255, 0, 255), radius=16, eps=1e-5)
    colour = refine_labels(coarse, values, 8, (96, 96), guide=colour_guide(frame * 255, 0, 255), radius=16, eps=1e-5)
    fast = refine_labels(coarse, values, 8, (96, 96), guide=colour_guide(frame * 255, 0, 255), radius=16, eps=1e-5,
                         subsample=4)
    j = {name: db_eval_iou(disk, labels == 1) for name, labels in
         (("plain", plain), ("gray", gray), ("colour", colour), ("fast", fast))}
    print({name: round(v, 3) for name, v in j.items()})
    assert j["gray"] < j["plain"] + 0.02 and j["colour"] > 0.98 and j["fast"] > 0.98
    assert j["colour"] > j["plain"] + 0.03
    three = np.concatenate([coarse, np.zeros((*coarse.shape[:2], 1), np.float32)], -1)
    general = refine_labels(three, np.array([0, 1, 2]), 8, (96, 96), guide=colour_guide(frame * 255, 0, 255),
                            radius=16, eps=1e-5, subsample=4)
    assert (general == fast).mean() > 0.999  # K labels filtered together as the two-label difference
    video = as_video((frame * 255).round().astype(np.uint8)[None])
    assert db_eval_iou(disk, refine_frame(video, 0, coarse, values, 8, video.intensity_range()) == 1) > 0.98


def test_two_label_shortcut_equals_the_general_argmax():
    rng = np.random.default_rng(1)
    coarse = rng.random((8, 8, 2)).astype(np.float32)
    guide = rng.random((64, 64)).astype(np.float32)
    values = np.array([0, 3])
    fast = refine_labels(coarse, values, 8, (64, 64), guide=guide, radius=4)
    three = np.concatenate([coarse, np.full((8, 8, 1), -5, np.float32)], -1)
    general = refine_labels(three, np.array([0, 3, 9]), 8, (64, 64), guide=guide, radius=4)
    assert set(np.unique(fast)) <= {0, 3}
    assert (fast == general).mean() > 0.999


def test_openblas_kernels_follow_the_cpu_flags_and_a_users_choice_is_kept(tmp_path, monkeypatch):
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}
    assert openblas_coretype(avx512) == "SkylakeX"
    assert openblas_coretype({"avx2", "fma", "avx512f"}) == "Haswell"
    assert openblas_coretype({"sse4_2", "avx"}) is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()
    monkeypatch.setattr(_blas.platform, "system", lambda: "Linux")
    monkeypatch.setattr(_blas.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_blas, "cpu_flags", lambda: avx512)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    configure_openblas()
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    configure_openblas()
    assert os.environ["OPENBLAS_CORETYPE"] == "Zen"


def test_the_closed_form_3x3_inverse_equals_lapack_on_flat_edge_and_textured_windows():
    """The colour guided filter's Sigma + eps U: flat (eps U alone), an edge between two colours
    (nearly rank 1) and texture; on the same float32 inputs Cramer's rule agrees with LAPACK's
    inverse in float64 to float32 precision, and so do the 1 x 1 and 2 x 2 cases."""
    rng = np.random.default_rng(3)
    edge = np.outer([0.5, -0.3, 0.2], [0.5, -0.3, 0.2])
    texture = rng.random((50, 8, 3))
    texture = np.einsum("nki,nkj->nij", texture - texture.mean(1, keepdims=True), texture - texture.mean(1, keepdims=True)) / 8
    sigma = (np.concatenate([np.zeros((1, 3, 3)), edge[None], texture]) + 1e-4 * np.eye(3)).astype(np.float32)
    exact = np.linalg.inv(sigma.astype(np.float64))
    closed = invert_symmetric(sigma)
    assert closed.dtype == np.float32 and closed.shape == exact.shape
    np.testing.assert_allclose(closed, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())
    np.testing.assert_allclose(invert_symmetric(np.full((4, 1, 1), 4.0)), 0.25)
    np.testing.assert_allclose(invert_symmetric(np.eye(2)[None] * 2), np.eye(2)[None] / 2)


def test_a_kept_guided_filter_gives_the_labels_of_a_fresh_one_click_after_click():
    """A session's FrameRefiner keeps each frame's guided-filter statistics: relabelling a frame
    from new scores gives the labels a fresh filter gives, colour (fast, subsampled) and gray."""
    rng = np.random.default_rng(5)
    for frames in (rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8), rng.integers(0, 4096, (2, 96, 128), np.uint16)):
        video = as_video(frames)
        kept = FrameRefiner(video, 8, video.intensity_range(), keep=True)
        for values in (np.array([0, 1]), np.array([0, 2, 5])):
            for t in (0, 1, 0):
                scores = rng.random((12, 16, len(values))).astype(np.float32)
                np.testing.assert_array_equal(kept(t, scores, values),
                                              refine_frame(video, t, scores, values, 8, video.intensity_range()))
        assert sorted(kept._filters) == [0, 1]


def test_torch_knn_finds_the_neighbours_faiss_finds_in_any_chunking():
    """The GPU search (`knn`, matrix product and top-k) is exact: on random unit vectors it gives
    faiss's neighbours, nearest first, whatever the chunk size, and the same vote."""
    import torch

    from napari_vosembed.engine.retrieval import knn

    rng = np.random.default_rng(0)
    refs = rng.normal(size=(500, 16)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    queries = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 3, 500)
    pools = {}
    for search in ("faiss", "torch"):
        pools[search] = ReferencePool(16, search=search)
        pools[search].add(refs[:200], labels[:200], group=1)
        pools[search].vote(queries, 5)  # builds the index, which must follow later edits
        pools[search].add(refs[200:], labels[200:], group=2)
    sims, idx = pools["faiss"]._search_index().search(queries, 7)
    for chunk in (4 * 500 * 7, 1 << 28):
        got_sims, got_idx = knn(torch.from_numpy(refs), torch.from_numpy(queries), 7, chunk_bytes=chunk)
        np.testing.assert_array_equal(got_idx.numpy(), idx)
        np.testing.assert_allclose(got_sims.numpy(), sims, atol=1e-5)
    for k in (1, 5):
        for a, b in zip(pools["faiss"].vote(queries, k), pools["torch"].vote(queries, k)):
            np.testing.assert_array_equal(a, b)
    assert pools["torch"].remove(2) == 300
    np.testing.assert_array_equal(pools["torch"].search(queries, 3)[1], labels[:200][idx_of(refs[:200], queries, 3)])


def idx_of(refs, queries, k):
    """Indices of the k largest inner products, by sorting (the definition)."""
    return np.argsort(-(queries @ refs.T), axis=1, kind="stable")[:, :k]


def test_an_unknown_search_is_refused():
    import pytest

    with pytest.raises(ValueError, match="search must be 'faiss' or 'torch'"):
        ReferencePool(4, search="annoy")
