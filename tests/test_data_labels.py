"""Class labels from the datamodules (`labels=True`, `num_classes`, `real_labels`): issue #12.

Labels are checked against an independent source, never against the datamodule's own label
tensor alone: scikit-learn's digits found by their pixels, the generating mode of 8gaussians
and its nearest mode, make_moons' own label, the folder an image was written to, and a fake
torchvision dataset's `__getitem__`. Everything runs offline (folders in tmp_path).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from ddpm_lightning.data import (
    DigitsDataModule,
    ImageFolderDataModule,
    TorchvisionDataModule,
    Toy2DDataModule,
)
from ddpm_lightning.data.toy2d import standardise


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- digits ------------------------------------------------------------------------------------


def sklearn_digit_of(images: torch.Tensor) -> torch.Tensor:
    """The scikit-learn target of each 8x8 image (B, 1, 8, 8) in [-1, 1], found by its pixels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).flatten(1) / 8.0 - 1.0  # (1797, 64)
    distance = torch.cdist(images.flatten(1), pixels)  # (B, 1797)
    assert (distance.min(1).values < 1e-5).all()  # every image is one of the digits, exactly
    # duplicated pictures exist; they all carry one label, so any exact match names the digit
    targets = torch.as_tensor(digits.target)
    for row in distance:
        assert targets[row < 1e-5].unique().numel() == 1
    return targets[distance.argmin(1)]


def test_digits_batches_carry_their_sklearn_labels():
    dm = DigitsDataModule(image_size=8, batch_size=64, labels=True, hflip=False)
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.long
    assert torch.equal(labels, sklearn_digit_of(images))
    val_images, val_labels = next(iter(dm.val_dataloader()))
    assert torch.equal(val_labels, sklearn_digit_of(val_images))


def test_digits_batch_is_a_tuple_and_labels_false_is_unchanged():
    labelled = DigitsDataModule(batch_size=32, labels=True, shuffle_seed=3)
    plain = DigitsDataModule(batch_size=32, shuffle_seed=3)
    pair = next(iter(labelled.train_dataloader()))
    assert isinstance(pair, tuple) and len(pair) == 2
    batch = next(iter(plain.train_dataloader()))
    assert isinstance(batch, torch.Tensor)
    assert torch.equal(pair[0], batch)  # the labels change neither the order nor the images
    assert isinstance(next(iter(plain.val_dataloader())), torch.Tensor)


def test_real_labels_align_with_real_samples():
    dm = DigitsDataModule(image_size=8, batch_size=64, labels=True)
    for split in ("train", "val"):
        images = dm.real_samples(100, split)
        assert isinstance(images, torch.Tensor) and images.shape == (100, 1, 8, 8)
        labels = dm.real_labels(100, split)
        assert labels.dtype == torch.long and torch.equal(labels, sklearn_digit_of(images))
        assert torch.equal(labels, dm.labels(split)[:100])  # the older per-split method agrees
    # without labels=True the labels are there too (num_classes is a property of the data)
    assert torch.equal(DigitsDataModule(image_size=8).real_labels(100), dm.real_labels(100))
    with pytest.raises(ValueError, match=r"real_labels\(n=181, split='val'\).*only 180"):
        dm.real_labels(181, "val")


def test_flips_keep_labels():
    dm = DigitsDataModule(image_size=8, batch_size=1617, labels=True, hflip=True)  # one batch: all of train
    images, labels = next(iter(dm.train_dataloader()))
    originals = dm.real_samples(1617).flatten(1)
    same = torch.cdist(images.flatten(1), originals).min(1).values == 0
    mirrored = torch.cdist(images.flip(-1).flatten(1), originals).min(1).values == 0
    assert same.sum() > 600 and mirrored.sum() > 600 and (same | mirrored).all()  # about half flipped
    unflipped = torch.where(same[:, None, None, None], images, images.flip(-1))
    assert torch.equal(labels, sklearn_digit_of(unflipped))
    # and the flips are the same draws as without labels
    plain = next(iter(DigitsDataModule(image_size=8, batch_size=1617, hflip=True).train_dataloader()))
    assert torch.equal(images, plain)


# -- toy 2-D -----------------------------------------------------------------------------------


def test_8gaussians_labels_are_the_generating_mode():
    dm = Toy2DDataModule("8gaussians", n_samples=2000, noise=0.1, batch_size=500, labels=True)
    assert dm.num_classes == 8 and len(dm.class_names) == 8
    points, labels = next(iter(dm.train_dataloader()))
    assert points.shape == (500, 2) and labels.shape == (500,) and labels.dtype == torch.long
    # the modes, standardised as the data is: class c at angle c * 2 pi / 8 (counter-clockwise)
    angles = np.arange(8) * 2 * np.pi / 8
    modes = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (8, 2)
    # the standardisation of a balanced pool is close to the identity up to scale: compare angles
    nearest = torch.cdist(points / points.norm(dim=1, keepdim=True), torch.as_tensor(modes, dtype=torch.float32))
    # modes are 2 sin(pi/8) * sqrt(2) = 1.08 apart after standardisation; noise 0.1 never crosses
    assert torch.equal(nearest.argmin(1), labels)
    assert set(labels.tolist()) == set(range(8))


def test_8gaussians_labels_match_the_generator_exactly():
    """The clean points of the pool re-generated here: each label's mode is its point's mode."""
    dm = Toy2DDataModule("8gaussians", n_samples=500, noise=0.0, val_fraction=0, batch_size=500, labels=True)
    points = dm.real_samples(500)
    labels = dm.real_labels(500)
    angles = labels.double() * 2 * np.pi / 8
    clean = standardise(np.stack([np.cos(angles), np.sin(angles)], axis=1))  # standardised as the pool
    # noise 0: the points are exactly the standardised modes of their labels (the shift of the
    # standardisation depends on the class counts, which are those of the labels)
    assert np.allclose(points.numpy(), clean, atol=1e-5)


def test_moons_labels_are_make_moons_labels():
    from sklearn.datasets import make_moons

    dm = Toy2DDataModule("moons", n_samples=1000, noise=0.0, val_fraction=0, batch_size=1000, labels=True)
    assert dm.num_classes == 2
    points, labels = dm.real_samples(1000), dm.real_labels(1000)
    # make_moons' two half circles of radius 1: class 0 centred (0, 0), class 1 centred (1, 0.5)
    rng = np.random.default_rng(0)  # Toy2DDataModule's default seed
    raw, raw_labels = make_moons(1000, noise=0.0, random_state=int(rng.integers(2**31 - 1)))
    scale = np.sqrt(((raw - raw.mean(0)) ** 2).mean())
    back = points.double().numpy() * scale + raw.mean(0)  # undo the standardisation
    centres = np.array([[0.0, 0.0], [1.0, 0.5]])[labels.numpy()]
    assert np.allclose(np.linalg.norm(back - centres, axis=1), 1.0, atol=1e-4)
    assert np.bincount(labels.numpy()).tolist() == np.bincount(raw_labels).tolist() == [500, 500]
    # the training batch pairs each point with that same label
    train_points, train_labels = next(iter(dm.train_dataloader()))
    order = torch.cdist(train_points, points).argmin(1)
    assert torch.equal(train_labels, labels[order])


def test_swiss_roll_has_no_labels():
    assert Toy2DDataModule("swiss_roll").num_classes is None
    with pytest.raises(ValueError) as excinfo:
        Toy2DDataModule("swiss_roll", labels=True)
    message = one_line_error(excinfo)
    assert message.startswith("data=toy2d dataset=swiss_roll has no class labels; conditioning=class needs")
    assert "moons or 8gaussians" in message and "digits" in message
    with pytest.raises(ValueError, match="real_labels: data=toy2d dataset=swiss_roll has no class labels"):
        Toy2DDataModule("swiss_roll", n_samples=100).real_labels(5)


def test_labels_must_be_a_bool():
    with pytest.raises(ValueError, match="labels must be true or false, got 'yes'"):
        DigitsDataModule(labels="yes")


# -- image folders -----------------------------------------------------------------------------


def write_image(path: Path, value: int, size=(10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


@pytest.fixture
def classes_folder(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """root/{cat,dog,emu}/...: each image's grey level names its class folder."""
    root = tmp_path / "animals"
    level_to_class = {}
    for c, (name, count) in enumerate([("cat", 5), ("dog", 4), ("emu", 3)]):
        for i in range(count):
            level = 20 * c + 3 * i  # distinct per image
            sub = "nested/" if name == "dog" and i % 2 else ""  # images may sit deeper
            write_image(root / name / f"{sub}img{i}.png", level)
            level_to_class[level] = c
    (root / ".cache").mkdir()
    write_image(root / ".cache" / "x.png", 255)  # hidden: no class
    (root / "empty").mkdir()  # no images: no class
    (root / "readme.txt").write_text("not an image")
    return root, level_to_class


def folder_class_of(images: torch.Tensor, level_to_class: dict[int, int]) -> torch.Tensor:
    levels = ((images[:, 0, 0, 0] + 1) / 2 * 255).round().long()
    return torch.tensor([level_to_class[int(v)] for v in levels])


def test_folder_labels_come_from_the_class_folders(classes_folder):
    root, level_to_class = classes_folder
    dm = ImageFolderDataModule(root, image_size=4, batch_size=12, val_fraction=0, labels=True,
                               drop_last=False, num_workers=0)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "emu"]  # before setup
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (12, 3, 4, 4) and labels.dtype == torch.long
    assert torch.equal(labels, folder_class_of(images, level_to_class))
    assert torch.equal(dm.real_labels(12), folder_class_of(dm.real_samples(12), level_to_class))


def test_folder_class_count_ignores_labels_flag_and_needs_no_setup(classes_folder, folder_like_test_data):
    root, _ = classes_folder
    dm = ImageFolderDataModule(root)
    assert dm.num_classes == 3 and dm.paths == []  # only directory listings were read
    assert ImageFolderDataModule(folder_like_test_data).class_names == ["a", "b", "c"]


@pytest.fixture
def folder_like_test_data(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    write_image(root / "a" / "x.png", 0)
    write_image(root / "b" / "deeper" / "y.jpg", 0)
    write_image(root / "c" / "z.bmp", 0)
    return root


def test_folder_without_class_subfolders_fails_in_one_line(tmp_path):
    flat = tmp_path / "flat"
    write_image(flat / "one.png", 0)
    write_image(flat / "two.png", 0)
    assert ImageFolderDataModule(flat).num_classes is None
    with pytest.raises(ValueError) as excinfo:
        ImageFolderDataModule(flat, labels=True)
    message = one_line_error(excinfo)
    assert re.search(r"data=folder root='.*flat' has no class labels: it holds 2 image\(s\) directly under it", message)
    assert "root/<class>/<image>" in message and "conditioning=class needs labelled data" in message
    # images at the top next to class folders: not a class layout either
    write_image(flat / "cls" / "three.png", 0)
    assert ImageFolderDataModule(flat).num_classes is None
    # subfolders without images
    bare = tmp_path / "bare"
    (bare / "sub").mkdir(parents=True)
    (bare / "sub" / "notes.txt").write_text("no pictures")
    with pytest.raises(ValueError, match=r"has no subfolder with images \(1 subfolder\(s\) in all\)"):
        ImageFolderDataModule(bare, labels=True)


def test_folder_missing_root_keeps_its_error(tmp_path):
    missing = tmp_path / "nope"
    assert ImageFolderDataModule(missing).num_classes is None  # construction still passes
    with pytest.raises(ValueError, match=rf"image folder '{re.escape(str(missing))}' does not exist"):
        ImageFolderDataModule(missing, labels=True)


# -- torchvision -------------------------------------------------------------------------------


class FakeMNIST(torch.utils.data.Dataset):
    """Stands in for torchvision.datasets.MNIST: 40 28x28 images whose first pixel encodes the
    label, with `targets` as torchvision has them."""

    classes = torchvision.datasets.MNIST.classes

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        self.transform = transform
        rng = np.random.default_rng(1)
        self.targets = torch.as_tensor(rng.integers(10, size=40))
        self.images = np.zeros((40, 28, 28), dtype=np.uint8)
        self.images[:, 0, 0] = self.targets.numpy() * 20

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])  # (28, 28) uint8: mode L
        return (self.transform(img) if self.transform else img), int(self.targets[i])


def test_torchvision_labelled_batches(monkeypatch, tmp_path):
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    dm = TorchvisionDataModule("mnist", data_dir=tmp_path, batch_size=8, val_fraction=0.2, labels=True,
                               hflip=True)
    assert dm.num_classes == 10 and dm.class_names[3] == "3 - three"
    images, labels = next(iter(dm.train_dataloader()))
    first_pixel = ((images[:, 0, 0, 0] + 1) / 2 * 255).round().long()
    # flipped images carry their pixel to the other corner: read whichever corner is set
    other = ((images[:, 0, 0, -1] + 1) / 2 * 255).round().long()
    assert torch.equal(torch.maximum(first_pixel, other) // 20, labels)
    val_images, val_labels = next(iter(dm.val_dataloader()))
    assert torch.equal(((val_images[:, 0, 0, 0] + 1) / 2 * 255).round().long() // 20, val_labels)
    # each label is what the dataset's own __getitem__ says
    fake = FakeMNIST(None)
    indices = dm.split_indices("val")[:8]
    assert val_labels.tolist() == [fake[int(i)][1] for i in indices]


@pytest.mark.parametrize(
    "dataset, num_classes",
    [("mnist", 10), ("fashion_mnist", 10), ("kmnist", 10), ("cifar10", 10), ("svhn", 10),
     ("cifar100", 100), ("celeba", None), ("stl10", None)],
)
def test_torchvision_num_classes(dataset, num_classes, tmp_path):
    dm = TorchvisionDataModule(dataset, data_dir=tmp_path)
    assert dm.num_classes == num_classes
    assert dm.class_names is None or len(dm.class_names) == num_classes
    if num_classes is None:
        with pytest.raises(ValueError) as excinfo:
            TorchvisionDataModule(dataset, data_dir=tmp_path, labels=True)
        assert one_line_error(excinfo).startswith(f"data dataset={dataset} has no class labels")
    else:
        TorchvisionDataModule(dataset, data_dir=tmp_path, labels=True)  # no files read
    assert not any(tmp_path.iterdir())


def test_class_names_where_known():
    assert TorchvisionDataModule("cifar10").class_names[0] == "airplane"
    assert TorchvisionDataModule("fashion_mnist").class_names[-1] == "Ankle boot"
    assert TorchvisionDataModule("cifar100").class_names is None  # torchvision reads them from files


# -- exact resume with labels ------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_labelled_loader_resumes_exactly(num_workers):
    """As tests/test_resume.py's loader test, with (image, label) batches and flips."""
    def loader():
        return DigitsDataModule(image_size=8, batch_size=16, val_fraction=0.89, hflip=True, shuffle_seed=7,
                                labels=True, num_workers=num_workers).train_dataloader()

    batches = len(loader())
    reference = []
    ref = loader()
    for epoch in range(2):
        ref.sampler.set_epoch(epoch)
        reference += list(ref)
    first = loader()
    first.sampler.set_epoch(0)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it, first
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)
    seen += list(resumed)
    resumed.sampler.set_epoch(1)
    seen += list(resumed)
    assert len(seen) == len(reference) == 2 * batches
    for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(seen, reference)):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref), f"batch {i} differs after resuming"
    # the labels still belong to their (possibly flipped) images
    images, labels = torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen])
    train = DigitsDataModule(image_size=8, val_fraction=0.89)
    originals = train.real_samples(len(train.split_indices("train"))).flatten(1)
    same = torch.cdist(images.flatten(1), originals).min(1).values == 0
    assert 0 < same.sum() < len(images)  # some flipped, some not
    assert torch.equal(labels, sklearn_digit_of(torch.where(same[:, None, None, None], images, images.flip(-1))))


def test_labelled_loader_shards_under_ddp():
    """Two ranks' shares (as under DDP) cover the training split once, labels attached."""
    from types import SimpleNamespace

    shares = []
    for rank in (0, 1):
        dm = DigitsDataModule(image_size=8, batch_size=50, val_fraction=0.9, labels=True, drop_last=False)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank,
                                     fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                                         batch_progress=SimpleNamespace(is_last_batch=False))))
        shares.append([b for b in dm.train_dataloader()])
    images = [torch.cat([x for x, _ in share]) for share in shares]
    labels = [torch.cat([y for _, y in share]) for share in shares]
    n_train = len(DigitsDataModule(val_fraction=0.9).split_indices("train"))
    assert sum(len(x) for x in images) == n_train + n_train % 2  # padded to a multiple of 2
    for x, y in zip(images, labels):
        assert torch.equal(y, sklearn_digit_of(x))
    assert not torch.equal(images[0][:10], images[1][:10])


def test_labelled_batches_reach_lightning_steps_as_tuples():
    import lightning as L

    seen = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(2, 2)

        def training_step(self, batch, _):
            assert isinstance(batch, tuple)
            points, labels = batch
            assert points.shape == (64, 2) and labels.shape == (64,) and labels.dtype == torch.long
            seen.append(labels)
            return (self.embed(labels) - points).pow(2).mean()

        def validation_step(self, batch, _):
            points, labels = batch
            self.log("val/loss", (self.embed(labels) - points).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Tiny(), datamodule=Toy2DDataModule(n_samples=1000, batch_size=64, labels=True))
    assert len(seen) == 2 and set(torch.cat(seen).tolist()) == {0, 1}
