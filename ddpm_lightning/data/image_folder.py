"""`ImageFolderDataModule`: every image under a folder, searched recursively; classes from its subfolders.

Files are found by extension (`IMAGE_EXTENSIONS`, case-insensitive) and sorted by path, so the
pool and its seeded split are the same on every machine. Hidden files and folders (a leading
dot: `.ipynb_checkpoints`, macOS `._x.jpg` resource forks) are skipped: they are copies or not
images at all. `setup()` opens every file header with PIL's `verify()` so a corrupt file stops
the run before training, naming the file, rather than crashing a worker hours in.

Classes follow torchvision's `ImageFolder`: in the layout root/<class>/<image> (images may sit
deeper inside a class folder), the sorted names of root's immediate non-hidden subfolders that
hold images are the classes, class index = position in that list. Images directly under root,
or no such subfolder, mean no classes (`num_classes` None). The classes are found in the
constructor from directory listings alone (root's, and each subfolder's up to its first image),
because the model is built from `num_classes`; no image is opened there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
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


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _entries(folder: Path | str) -> Iterator[tuple[str, os.DirEntry]]:
    """The non-hidden entries of `folder`, read lazily: ("folder", entry) for a subfolder (not
    followed through a symlink, as find_images' rglob does not), ("image", entry) for an image file."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield "folder", entry
            elif is_image_name(entry.name) and entry.is_file():
                yield "image", entry


def has_image(folder: Path) -> bool:
    """Whether `folder` holds an image (recursively, hidden parts skipped). The listing is read
    lazily and stops at the first image, so a class folder of a million files costs one batch
    of directory entries, not its whole listing."""
    subfolders = []
    for kind, entry in _entries(folder):
        if kind == "image":
            return True
        subfolders.append(entry.path)
    return any(has_image(Path(sub)) for sub in sorted(subfolders))


def find_classes(root: Path) -> tuple[list[str] | None, str]:
    """The class names of `root` (sorted names of its non-hidden subfolders holding images),
    or None and what was found instead (for the error message of `labels=True`)."""
    if not root.is_dir():
        return None, "does not exist or is not a folder"
    listing = list(_entries(root))
    folders = [entry.name for kind, entry in listing if kind == "folder"]
    loose = len(listing) - len(folders)
    classes = sorted(name for name in folders if has_image(root / name))
    if loose:
        return None, f"holds {loose} image(s) directly under it (and {len(classes)} subfolder(s) with images)"
    if not classes:
        return None, f"has no subfolder with images ({len(folders)} subfolder(s) in all)"
    return classes, ""


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
        root: the folder, searched recursively; its subfolders are the classes (see above),
            used only with `labels=True`.
        image_size: output side: the shorter side is resized to it, then the centre cropped.
        channels: 3 (RGB) or 1 (grayscale, PIL mode "L").
        hflip: random horizontal flips in training.
        verify_images: check every file with PIL in `setup()` (turn off for huge folders that
            are known to be clean).
        **kwargs: the loader and split arguments of `DiffusionDataModule` (`labels=True`:
            `(images, classes)` batches; needs root/<class>/<image>).

    `class_names`: the class folders' names (None without classes); after `setup()`, `paths`
    holds every image file, in pool order.
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
        self.class_names, self._layout = find_classes(self.root)
        self.num_classes = None if self.class_names is None else len(self.class_names)
        if self.with_labels:
            self._check_root()  # a missing folder says so, not "no classes"
        self._check_labels()

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a folder")

    def _no_labels_reason(self) -> str:
        return (f"data=folder root={str(self.root)!r} has no class labels: it {self._layout}; classes need "
                f"the layout root/<class>/<image>")

    def _build_pool(self) -> Dataset:
        self._check_root()
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

    def _pool_labels(self) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.class_names or [])}
        labels = []
        for path in self.paths:
            top = path.relative_to(self.root).parts
            if len(top) < 2 or top[0] not in index:  # the folder changed since the constructor listed it
                raise ValueError(f"image {str(path)!r} is not inside one of the class folders {self.class_names} "
                                 f"found when data=folder was built; layout root/<class>/<image>")
            labels.append(index[top[0]])
        return torch.tensor(labels, dtype=torch.long)  # (N,)
