"""`ImageFolderDataModule`: every image under a folder, searched recursively, without labels.

Files are found by extension (`IMAGE_EXTENSIONS`, case-insensitive) and sorted by path, so the
pool and its seeded split are the same on every machine. Hidden files and folders (a leading
dot: `.ipynb_checkpoints`, macOS `._x.jpg` resource forks) are skipped: they are copies or not
images at all. `setup()` opens every file header with PIL's `verify()` so a corrupt file stops
the run before training, naming the file, rather than crashing a worker hours in.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ddpm_lightning.data.datamodule import DiffusionDataModule, check_choice, check_positive_int
from ddpm_lightning.data.transforms import MODES, image_transform

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)


def find_images(root: Path) -> list[Path]:
    """Image files under `root` (recursively), sorted, hidden files and folders skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def check_images(paths: list[Path]) -> None:
    """Raise ValueError naming the first file PIL cannot identify or whose header is broken."""
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()  # reads headers and checksums, not the full decode: cheap
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
            raise ValueError(f"cannot read image file {str(path)!r}: {err}") from err


class ImageFiles(Dataset):
    """Image files as transformed tensors; the file is opened only when the item is read."""

    def __init__(self, paths: list[Path], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as img:
                return self.transform(img)
        except (OSError, SyntaxError, ValueError) as err:  # with verify_images=false a bad file shows up here
            raise ValueError(f"cannot read image file {str(self.paths[i])!r} (data.verify_images=true finds "
                             f"every such file before training): {err}") from None


class ImageFolderDataModule(DiffusionDataModule):
    """All images under `root` as (channels, image_size, image_size) tensors in [-1, 1].

    Args:
        root: the folder, searched recursively; sub-folders (e.g. classes) are ignored.
        image_size: output side: the shorter side is resized to it, then the centre cropped.
        channels: 3 (RGB) or 1 (grayscale, PIL mode "L").
        hflip: random horizontal flips in training.
        verify_images: check every file with PIL in `setup()` (turn off for huge folders that
            are known to be clean).
        **kwargs: the loader and split arguments of `DiffusionDataModule`.
    """

    is_image = True

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        channels: int = 3,
        hflip: bool = False,
        verify_images: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.image_size = check_positive_int("image_size", image_size)
        self.channels = check_choice("channels", channels, MODES)
        self.hflip = bool(hflip)
        self.verify_images = bool(verify_images)
        # The folder's name alone is ambiguous (many are called "images"): add a path hash.
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]
        self.name = f"folder_{self.root.name or 'root'}_{digest}"
        self.data_shape = (channels, image_size, image_size)
        self.paths: list[Path] = []

    def _build_pool(self) -> Dataset:
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        paths = find_images(self.root)
        if not paths:
            raise ValueError(
                f"no images found under {str(self.root)!r} (searched recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        if self.verify_images:
            check_images(paths)
        self.paths = paths
        return ImageFiles(paths, image_transform(self.image_size, self.channels))
