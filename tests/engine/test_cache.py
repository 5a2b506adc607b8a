import dataclasses

import numpy as np
import pytest

from napari_vosembed.engine import cache
from napari_vosembed.engine.cache import EmbeddingSettings, _publish, cache_usage, embed_video
from napari_vosembed.errors import VosEmbedError
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


def test_cancelled_work_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A cancel finishes the batch being written (at most the one after the last reported), and
    the next run computes exactly the frames not marked done."""
    monkeypatch.setattr(cache, "embeddings_root", lambda: tmp_path)
    video = _video(n=6)
    gen = embed_video(video, TINY, device="cpu", batch_size=2)
    steps = [next(gen), next(gen)]
    gen.close()
    assert steps[-1].done in (2, 4)  # the writer thread may have stored the next batch already
    (done_file,) = tmp_path.glob("*/done.npy")
    finished = int(np.load(done_file).sum())
    assert finished in (steps[-1].done, steps[-1].done + 2)
    entry = drive(embed_video(video, TINY, device="cpu", batch_size=2), quiet=True)
    assert entry.complete and entry.computed == 6 - finished
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


def test_batched_streaming_embeddings_label_as_one_frame_at_a_time(tmp_path, monkeypatch):
    """The streaming path (reader thread ahead, writer thread behind, 4 frames per pass, a last
    batch of 3) stores the embeddings one frame per pass gives, and PML labels every frame alike."""
    import torch

    from napari_vosembed.engine.pml_index import PMLIndex
    from napari_vosembed.io import as_video
    from napari_vosembed.prompts import Prompts

    rng = np.random.default_rng(3)
    video = np.full((11, 48, 64, 3), (30, 40, 200), np.uint8)
    masks = np.zeros((11, 48, 64), np.int32)
    for t in range(11):
        video[t, 10:30, 5 + 3 * t : 25 + 3 * t] = (220, 30, 30)
        masks[t, 10:30, 5 + 3 * t : 25 + 3 * t] = 1
    video = np.clip(video + rng.normal(0, 5, video.shape), 0, 255).astype(np.uint8)
    settings = dataclasses.replace(TINY, saliency_stride=4)
    runs = {}
    for batch in (1, 4):
        monkeypatch.setattr(cache, "embeddings_root", lambda: tmp_path / str(batch))
        emb = drive(embed_video(video, settings, device="cpu", batch_size=batch), quiet=True)
        assert emb.computed == 11 and emb.complete
        index = PMLIndex(as_video(video), emb, None, torch.device("cpu"))
        index.add_prompts(Prompts().add_mask(0, masks[0]))
        runs[batch] = emb, drive(index.predict_all(), quiet=True)
    (one, labels_one), (four, labels_four) = runs[1], runs[4]
    for level in (4, 8):
        np.testing.assert_allclose(one.levels[level], four.levels[level], atol=2e-3)
    np.testing.assert_allclose(one.saliency, four.saliency, atol=2e-3)
    np.testing.assert_array_equal(labels_one, labels_four)
    assert (labels_four[10] == masks[10]).mean() > 0.95


def test_a_failing_frame_read_stops_the_stream_with_its_error(monkeypatch):
    """An error in the reader thread (a frame that cannot be decoded) reaches the caller, and the
    frames finished before it stay done."""
    from napari_vosembed.errors import VideoReadError
    from napari_vosembed.io import as_video

    video = as_video(_video(n=9))
    original = type(video).__getitem__

    def broken(self, index):
        if index == 6:
            raise VideoReadError("frame 6: truncated file")
        return original(self, index)

    monkeypatch.setattr(type(video), "__getitem__", broken)
    with pytest.raises(VideoReadError, match="frame 6: truncated"):
        drive(embed_video(video, TINY, device="cpu", batch_size=2), quiet=True)
    monkeypatch.setattr(type(video), "__getitem__", original)
    resumed = drive(embed_video(video, TINY, device="cpu", batch_size=2), quiet=True)
    assert resumed.complete and resumed.computed == 3


def test_a_chosen_scale_comes_from_vosembed_scale_and_is_checked(monkeypatch):
    monkeypatch.delenv("VOSEMBED_SCALE", raising=False)
    assert EmbeddingSettings().resolve(2048, 2048).scale == 0.125  # about 320 x 320 pixels
    monkeypatch.setenv("VOSEMBED_SCALE", "0.5")
    assert EmbeddingSettings().resolve(2048, 2048).scale == 0.5
    assert EmbeddingSettings(scale=1.0).resolve(2048, 2048).scale == 1.0  # a scale given wins
    for bad in ("zero", "0", "-1", "9"):
        monkeypatch.setenv("VOSEMBED_SCALE", bad)
        with pytest.raises(VosEmbedError, match=f"VOSEMBED_SCALE is the factor .* not '{bad}'"):
            EmbeddingSettings().resolve(100, 100)


def test_frames_larger_than_a_tile_are_embedded_in_tiles_under_their_own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSEMBED_EMBEDDINGS_DIR", str(tmp_path))
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 96, 3), dtype=np.uint8)
    whole = drive(embed_video(frames, TINY), quiet=True)
    tiles = drive(embed_video(frames, dataclasses.replace(TINY, tile=32)), quiet=True)  # 3 x 5 tiles
    assert tiles.path != whole.path and tiles.computed == 3  # not the whole frames' entry
    for level in whole.levels:
        np.testing.assert_allclose(tiles.levels[level][:].astype(np.float32),
                                   whole.levels[level][:].astype(np.float32), atol=2e-3)
    unsplit = drive(embed_video(frames, dataclasses.replace(TINY, tile=128)), quiet=True)
    assert unsplit.path == whole.path and unsplit.computed == 0  # a tile the frames fit: the same entry
