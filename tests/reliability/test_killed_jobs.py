"""A process killed (SIGKILL) while it embeds a video: the next run resumes from the frames it had
finished and gives exactly the embeddings of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_vosembed.engine import cache
from napari_vosembed.engine.cache import EmbeddingSettings, embed_video
from napari_vosembed.progress import drive

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

SETTINGS = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=4)
FRAMES = 40


def clip():
    return np.random.default_rng(7).integers(0, 256, (FRAMES, 48, 64, 3), dtype=np.uint8)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from napari_vosembed.engine.cache import EmbeddingSettings, embed_video
    frames = np.random.default_rng(7).integers(0, 256, ({frames}, 48, 64, 3), dtype=np.uint8)
    settings = EmbeddingSettings(backbone="tiny", scale=1.0, levels=(4, 8), saliency_stride=4)
    for p in embed_video(frames, settings, device="cpu", batch_size=1):
        print(p.done, flush=True)
        time.sleep(0.05)
""")


def test_a_killed_embedding_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    root = tmp_path / "killed"
    env = {**os.environ, "VOSEMBED_EMBEDDINGS_DIR": str(root)}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(frames=FRAMES)], stdout=subprocess.PIPE, env=env,
                             text=True)
    for line in child.stdout:
        if int(line) >= 10:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    monkeypatch.setattr(cache, "embeddings_root", lambda: root)
    resumed = drive(embed_video(clip(), SETTINGS, device="cpu"), quiet=True)
    assert 0 < resumed.computed < FRAMES - 9 and resumed.complete  # what was done is kept
    monkeypatch.setattr(cache, "embeddings_root", lambda: tmp_path / "clean")
    clean = drive(embed_video(clip(), SETTINGS, device="cpu"), quiet=True)
    assert clean.computed == FRAMES
    for level in SETTINGS.levels:
        np.testing.assert_array_equal(np.asarray(resumed.levels[level]), np.asarray(clean.levels[level]))
    np.testing.assert_array_equal(np.asarray(resumed.saliency), np.asarray(clean.saliency))
