import dataclasses

import numpy as np
import pytest

from napari_vosembed.errors import VosEmbedError
from napari_vosembed.engine.cache import EmbeddingSettings, _publish, cache_usage, embed_video
from napari_vosembed.progress import drive

TINY = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=2)


def _video(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 37, 50, 3), dtype=np.uint8)


def test_embeddings_have_the_documented_layout():
    emb = drive(embed_video(_video(), TINY, device="cpu"), quiet=True)
    assert emb.levels[4].shape == (5, 10, 13, 16) and emb.levels[8].shape == (5, 5, 7, 32)
    assert emb.levels[4].dtype == np.float16 and emb.grid_shape == (10, 13) and emb.channels == 48
    assert emb.saliency.shape == (5, 19, 25)
    assert emb.complete and emb.computed == 5
    np.testing.assert_allclose(np.linalg.norm(emb.levels[8][2].astype(np.float32), axis=-1), 1, atol=2e-3)
    combined = emb.frame_features(2).numpy()
    assert combined.shape == (10, 13, 48)
    np.testing.assert_allclose(combined[..., :16], emb.levels[4][2], atol=2e-3)
    assert emb.nbytes >= emb.levels[4].nbytes + emb.levels[8].nbytes and cache_usage() >= emb.nbytes


def test_second_run_reuses_the_cache_and_a_changed_video_does_not():
    video = _video()
    first = drive(embed_video(video, TINY, device="cpu"), quiet=True)
    again = drive(embed_video(video, TINY, device="cpu"), quiet=True)
    assert again.computed == 0 and again.path == first.path
    np.testing.assert_array_equal(first.levels[8][3], again.levels[8][3])
    video[2, 0, 0] ^= 1
    changed = drive(embed_video(video, TINY, device="cpu"), quiet=True)
    assert changed.computed == 5 and changed.path != first.path
    decoder = drive(embed_video(video, dataclasses.replace(TINY, features="decoder"), device="cpu"), quiet=True)
    assert decoder.computed == 5 and decoder.path not in (first.path, changed.path)


def test_cancelled_work_resumes_where_it_stopped():
    video = _video(n=6)
    gen = embed_video(video, TINY, device="cpu", batch_size=2)
    steps = [next(gen), next(gen)]
    gen.close()
    assert steps[-1].done == 2
    resumed = drive(embed_video(video, TINY, device="cpu", batch_size=2), quiet=True)
    assert resumed.computed == 4 and resumed.complete
    fresh = drive(embed_video(video, TINY, device="cpu", batch_size=6), quiet=True)
    assert fresh.computed == 0


def test_an_entry_another_process_published_first_is_kept(tmp_path):
    """Two processes embedding one video (a viewer and the CLI): the one that publishes its new
    entry second drops its own and fills the other's; any other failure to publish is raised."""
    video = _video()
    first = drive(embed_video(video, TINY, device="cpu"), quiet=True)
    mine = first.path.with_name(first.path.name + ".partial-99")
    mine.mkdir()
    (mine / "meta.json").write_text("{}")
    _publish(mine, first.path)
    assert not mine.exists() and (first.path / "meta.json").read_text() != "{}"
    assert drive(embed_video(video, TINY, device="cpu"), quiet=True).computed == 0
    with pytest.raises(OSError):
        _publish(tmp_path / "gone.partial-1", tmp_path / "entry")


def test_scale_halves_the_grid():
    emb = drive(embed_video(_video(n=2), EmbeddingSettings("tiny", scale=0.5, levels=(4,), saliency_stride=0),
                            device="cpu"), quiet=True)
    assert emb.grid_shape == (5, 7) and emb.saliency is None
    assert emb.settings.stride == 8


def test_a_video_file_is_keyed_by_its_bytes(tmp_path):
    from napari_vosembed.io import open_video
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(_video(n=3)):
        cv2.imwrite(str(folder / f"f{t}.png"), frame)
    first = drive(embed_video(open_video(folder), TINY, device="cpu"), quiet=True)
    assert drive(embed_video(open_video(folder), TINY, device="cpu"), quiet=True).computed == 0
    cv2.imwrite(str(folder / "f1.png"), _video(n=1, seed=9)[0])
    assert drive(embed_video(open_video(folder), TINY, device="cpu"), quiet=True).path != first.path


def test_unknown_level_is_a_clear_error():
    with pytest.raises(VosEmbedError, match="strides 4, 8.*ask for 16"):
        drive(embed_video(_video(n=1), EmbeddingSettings("tiny", levels=(16,)), device="cpu"), quiet=True)
