"""The heads that ship with the package are checked against models/SHA256SUMS when loaded."""

import shutil

import pytest
import torch

from napari_vosembed.engine import heads
from napari_vosembed.engine.fetch import _sha256
from napari_vosembed.engine.nets.masktrack import MaskTrackNet
from napari_vosembed.engine.nets.pml import PMLHead
from napari_vosembed.errors import ModelFileError


def test_every_shipped_head_is_listed_with_its_sha256():
    listed = heads.shipped_sums()
    files = {p.name for p in heads.MODELS_DIR.glob("*.pt")}
    assert set(listed) == files
    for name, digest in listed.items():
        assert _sha256(heads.MODELS_DIR / name) == digest, f"{name}: update models/SHA256SUMS (sha256sum *.pt)"


def altered(source, dest):
    """`source` saved to `dest` with one weight changed: a file torch loads without complaint."""
    blob = torch.load(source, map_location="cpu", weights_only=False)
    name = next(iter(blob["state_dict"]))
    blob["state_dict"][name] = blob["state_dict"][name] + 1e-3
    torch.save(blob, dest)
    return dest.read_bytes()


@pytest.fixture
def package_models(tmp_path, monkeypatch):
    """A copy of the package's models folder standing in for it."""
    folder = tmp_path / "models"
    shutil.copytree(heads.MODELS_DIR, folder)
    monkeypatch.setattr(heads, "MODELS_DIR", folder)
    return folder


def test_an_altered_shipped_head_is_refused_by_name(package_models):
    path = package_models / "pml_head.pt"
    PMLHead.load(path)  # intact: loads
    data = altered(path, path)
    with pytest.raises(ModelFileError, match=r"shipped PML head .*pml_head\.pt is damaged.*vosembed train pml"):
        PMLHead.load(path)
    assert path.read_bytes() == data


def test_a_head_outside_the_package_is_not_checked(package_models, tmp_path):
    mine = tmp_path / "masktrack.pt"
    altered(package_models / "masktrack.pt", mine)
    MaskTrackNet.load(mine)  # a user's file of the same name: theirs to change


def test_training_into_the_package_records_the_new_sha256(package_models):
    path = package_models / "lse.pt"
    path.write_bytes(b"retrained")
    heads.record_shipped(path)
    assert heads.shipped_sums(package_models)["lse.pt"] == _sha256(path)
    assert len(heads.shipped_sums(package_models)) == len(list(package_models.glob("*.pt")))
