import os

import pytest

os.environ.setdefault("VOSEMBED_SYNC_WORKERS", "1")


@pytest.fixture(autouse=True)
def _isolated_embedding_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty embedding cache; the model cache (ISNet weights) stays shared."""
    from napari_vosembed.engine import cache

    root = tmp_path_factory.mktemp("embeddings")
    monkeypatch.setattr(cache, "embeddings_root", lambda: root)
    return root
