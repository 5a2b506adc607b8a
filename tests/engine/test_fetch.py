"""fetch_models with a fake `npm` on PATH: chunk joining, cache reuse, and the error messages."""

import hashlib
import io
import json
import os
import sys
import tarfile

import pytest

from napari_vosembed.engine import fetch
from napari_vosembed.errors import ModelFileError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a POSIX script")

CHUNKS = [b"first chunk|", b"second|", b"third and last"]


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_package(path):
    """A tarball shaped like the npm package: chunks in dist/ named by hash, listed in order."""
    names = ["ffff", "0000", "aaaa"]
    resources = {
        "/models/small": {"chunks": [{"hash": "0000", "offsets": [0, 7]}]},
        fetch.RESOURCE: {"chunks": [{"hash": n, "offsets": []} for n in names]},
    }
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/package.json", b"{}")
        _add(tar, "package/dist/resources.json", json.dumps(resources).encode())
        for name, data in zip(names, CHUNKS):
            _add(tar, f"package/dist/{name}", data)


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """Put a fake `npm` on PATH; returns a function that sets its behaviour."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tarball = tmp_path / "fake.tgz"
    _fake_package(tarball)
    log = tmp_path / "npm.log"

    def install(fail=False):
        body = (
            "echo 'npm error code ENOTFOUND registry.npmjs.org' >&2\nexit 1\n"
            if fail
            else f'echo "$@" >> "{log}"\ncp "{tarball}" ./imgly-background-removal-data-1.4.5.tgz\n'
        )
        script = bindir / "npm"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)

    install()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    joined = b"".join(CHUNKS)
    monkeypatch.setattr(fetch, "MODEL_SIZE", len(joined))
    monkeypatch.setattr(fetch, "MODEL_SHA256", hashlib.sha256(joined).hexdigest())
    install.log = log
    return install


def test_joins_chunks_in_order_and_reuses_cache(fake_npm, tmp_path):
    path = fetch.fetch_models()
    assert path == tmp_path / "cache" / "models" / "isnet-medium.onnx"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert fetch.model_path() == path
    assert fake_npm.log.read_text().split() == ["pack", fetch.NPM_PACKAGE]

    fake_npm(fail=True)
    assert fetch.fetch_models() == path
    with pytest.raises(ModelFileError, match="ENOTFOUND"):
        fetch.fetch_models(force=True)


def test_checksum_mismatch_deletes_file(fake_npm, monkeypatch):
    monkeypatch.setattr(fetch, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelFileError, match="corrupt") as info:
        fetch.fetch_models()
    assert "deleted" in str(info.value)
    assert os.listdir(fetch.default_model_path().parent) == []


def test_npm_failure_reports_stderr(fake_npm):
    fake_npm(fail=True)
    with pytest.raises(ModelFileError, match="npm error code ENOTFOUND"):
        fetch.fetch_models()


def test_missing_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ModelFileError, match="Install Node.js/npm") as info:
        fetch.fetch_models()
    assert str(tmp_path / "cache" / "models" / "isnet-medium.onnx") in str(info.value)


def test_model_path_not_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelFileError, match="vosembed fetch-models"):
        fetch.model_path()


@pytest.mark.parametrize("damage", ["altered", "truncated"])
def test_a_damaged_cached_backbone_is_refused_then_fetched_again(fake_npm, damage):
    path = fetch.fetch_models()
    good = path.read_bytes()
    bad = good[:-1] + b"X" if damage == "altered" else good[:5]
    path.write_bytes(bad)
    os.utime(path, ns=(1, 1))  # a new modification time: checked again
    with pytest.raises(ModelFileError, match="damaged.*vosembed fetch-models"):
        fetch.model_path()
    assert path.read_bytes() == bad  # reported, not touched
    fake_npm.log.write_text("")
    assert fetch.fetch_models() == path  # no --force needed: a bad file is fetched again
    assert fake_npm.log.read_text().split() == ["pack", fetch.NPM_PACKAGE]
    assert path.read_bytes() == good and fetch.model_path() == path
