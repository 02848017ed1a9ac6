"""Tests of ddpm_lightning.data: shapes, scaling, splits, real samples, errors and the configs.

Everything runs offline: digits ship with scikit-learn, toy data is generated, image folders
are written to tmp_path and torchvision datasets are replaced by a fake class.
"""

from __future__ import annotations

import re
from pathlib import Path

import hydra.utils
import lightning as L
import numpy as np
import pytest
import torch
import torchvision.datasets
from omegaconf import OmegaConf
from PIL import Image

from ddpm_lightning.data import (
    DiffusionDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    TorchvisionDataModule,
    Toy2DDataModule,
    data_shape_of,
)
from ddpm_lightning.data.datasets import RandomHFlip, TensorItems

CONF_DIR = Path(__file__).resolve().parents[1] / "ddpm_lightning" / "conf" / "data"


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    return dm


def assert_signed_images(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape[1:]) == shape
    assert x.min() >= -1.0 and x.max() <= 1.0


# -- digits and the shared base class ----------------------------------------------------------


def test_digits_batches_are_plain_tensors_in_range(digits):
    assert digits.data_shape == (1, 16, 16) and digits.is_image and digits.name == "digits"
    batch = next(iter(digits.train_dataloader()))
    assert batch.shape == (64, 1, 16, 16)
    assert_signed_images(batch, (1, 16, 16))
    # the whole range is used: background at -1, ink close to +1
    assert batch.min() == -1.0 and batch.max() > 0.9


@pytest.mark.parametrize("size", [8, 32])
def test_digits_image_size(size):
    dm = DigitsDataModule(image_size=size, batch_size=16)
    assert dm.data_shape == (1, size, size)  # known before setup
    assert_signed_images(dm.real_samples(4), (1, size, size))


def test_digits_upsampling_keeps_the_digit():
    small = DigitsDataModule(image_size=8).real_samples(20)
    big = DigitsDataModule(image_size=16).real_samples(20)
    down = torch.nn.functional.avg_pool2d(big, 2)  # (20, 1, 8, 8)
    assert (down - small).abs().mean() < 0.15


def test_split_is_deterministic_disjoint_and_complete(digits):
    train, val = digits.split_indices("train"), digits.split_indices("val")
    assert len(val) == round(0.1 * 1797) and len(train) + len(val) == 1797
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1797))
    again = DigitsDataModule(batch_size=64)
    assert torch.equal(again.split_indices("val"), val)
    other = DigitsDataModule(batch_size=64, split_seed=1)
    assert not torch.equal(other.split_indices("val"), val)


def test_val_loader_sees_every_val_image_once_in_order(digits):
    batches = list(digits.val_dataloader())
    assert [len(b) for b in batches] == [64, 64, 52]  # no drop_last for validation
    assert torch.equal(torch.cat(batches), digits.real_samples(180, "val"))


def test_train_loader_drops_last_and_shuffles(digits):
    loader = digits.train_dataloader()
    assert len(loader) == (1797 - 180) // 64 and loader.drop_last
    first = next(iter(loader))
    assert not torch.equal(first, digits.real_samples(64))


def test_val_fraction_zero_disables_validation():
    dm = DigitsDataModule(val_fraction=0.0)
    assert dm.val_dataloader() == [] and len(dm.split_indices("train")) == 1797


def test_real_samples_deterministic_and_errors(digits):
    a = digits.real_samples(100)
    assert torch.equal(a, DigitsDataModule().real_samples(100))
    assert torch.equal(a[:10], digits.real_samples(10))
    assert not torch.equal(a[:10], digits.real_samples(10, "val"))
    with pytest.raises(ValueError, match=r"n=181.*only 180"):
        digits.real_samples(181, "val")
    with pytest.raises(ValueError, match=r"split='test'.*'train', 'val'"):
        digits.real_samples(5, "test")


def test_digits_labels_align_with_real_samples(digits):
    labels = digits.labels("val")
    assert labels.shape == (180,) and labels.dtype == torch.long
    assert torch.equal(labels, digits.targets[digits.split_indices("val")])
    assert set(labels.tolist()) == set(range(10))
    # the images at those indices are the same pictures real_samples returns
    val_images = digits.images[digits.split_indices("val")[:5]]
    assert torch.equal(val_images, digits.real_samples(5, "val"))


def test_hflip_only_in_training():
    dm = DigitsDataModule(hflip=True, batch_size=1617, val_fraction=0.1)  # one batch: all of train
    torch.manual_seed(0)
    train = next(iter(dm.train_dataloader())).flatten(1)  # (1617, 256), shuffled
    originals = dm.real_samples(1617)
    same = torch.cdist(train, originals.flatten(1)).min(1).values == 0
    mirrored = torch.cdist(train, originals.flip(-1).flatten(1)).min(1).values == 0
    assert same.sum() > 600 and mirrored.sum() > 600 and (same | mirrored).all()  # about half each
    assert torch.equal(torch.cat(list(dm.val_dataloader())), dm.real_samples(180, "val"))


def test_random_hflip_wrapper():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert torch.equal(RandomHFlip(TensorItems(x), p=1.0)[0], x[0].flip(-1))
    assert torch.equal(RandomHFlip(TensorItems(x), p=0.0)[0], x[0])


def test_cache_key_is_filesystem_safe_and_distinguishes(digits):
    key = digits.cache_key("train", 1000)
    assert re.fullmatch(r"[A-Za-z0-9._=-]+", key)
    for part in ("digits", "train", "1x16x16", "n1000"):
        assert part in key
    keys = {
        key,
        digits.cache_key("val", 1000),
        digits.cache_key("train", 500),
        DigitsDataModule(image_size=32).cache_key("train", 1000),
        DigitsDataModule(split_seed=3).cache_key("train", 1000),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0, got -1"),
        ({"image_size": 0}, "image_size must be a positive integer, got 0"),
        ({"image_size": "16"}, "image_size must be a positive integer, got '16'"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_batch_larger_than_training_split_fails_in_setup():
    dm = Toy2DDataModule(n_samples=100, batch_size=128)
    with pytest.raises(ValueError, match=r"90 training examples.*batch_size=128"):
        dm.setup("fit")
    Toy2DDataModule(n_samples=100, batch_size=128, drop_last=False).setup("fit")  # allowed


# -- toy 2-D data ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "8gaussians"])
def test_toy2d_statistics(name):
    dm = Toy2DDataModule(dataset=name, n_samples=4000, batch_size=100)
    assert dm.data_shape == (2,) and not dm.is_image
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (100, 2) and batch.dtype == torch.float32
    pool = torch.cat([dm.real_samples(3600), dm.real_samples(400, "val")])
    assert pool.mean(0).abs().max() < 0.05
    assert abs(pool.pow(2).mean().sqrt().item() - 1.0) < 0.05  # unit overall scale
    assert torch.equal(pool[:50], Toy2DDataModule(dataset=name, n_samples=4000).real_samples(50))


def test_toy2d_shapes_differ_and_seed_matters():
    moons = Toy2DDataModule("moons", n_samples=1000, val_fraction=0).real_samples(1000)
    gauss = Toy2DDataModule("8gaussians", n_samples=1000, val_fraction=0).real_samples(1000)
    reseeded = Toy2DDataModule("moons", n_samples=1000, val_fraction=0, seed=1).real_samples(1000)
    assert not torch.equal(moons, reseeded)
    # 8 gaussians: every point lies close to one of 8 modes on a circle of radius sqrt(2)
    radius = gauss.norm(dim=1)
    assert (radius - 2**0.5).abs().mean() < 0.15
    assert (moons.norm(dim=1) - 2**0.5).abs().mean() > 0.3


def test_toy2d_bad_name_and_noise():
    choices = r"\['8gaussians', 'moons', 'swiss_roll'\]"
    with pytest.raises(ValueError, match=rf"dataset='circles'.*{choices}"):
        Toy2DDataModule(dataset="circles")
    with pytest.raises(ValueError, match="noise must be a number >= 0, got -0.1"):
        Toy2DDataModule(noise=-0.1)


def test_toy2d_trains_with_lightning():
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

        def training_step(self, batch, _):
            assert isinstance(batch, torch.Tensor) and batch.shape == (64, 2)
            return (self.net(batch) - batch).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val/loss", (self.net(batch) - batch).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), datamodule=Toy2DDataModule(n_samples=1000, batch_size=64))


# -- image folders -----------------------------------------------------------------------------


def write_image(path: Path, size=(20, 12), color=(255, 0, 0), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for i in range(6):
        write_image(root / f"a/img{i}.png", color=(200, 10 * i, 0))
    for i in range(4):
        write_image(root / f"b/deeper/img{i}.jpg", size=(9, 30), color=(0, 0, 255))
    write_image(root / "c/gray.bmp", size=(16, 16), color=128, mode="L")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden/broken.png").write_bytes(b"junk")  # hidden: skipped, so no error
    (root / "._resource.png").write_bytes(b"junk")  # macOS resource fork: skipped
    return root


def test_folder_finds_nested_images_and_scales(folder):
    dm = ImageFolderDataModule(folder, image_size=8, batch_size=4, val_fraction=0.2)
    assert dm.data_shape == (3, 8, 8)
    dm.setup("fit")
    assert len(dm.paths) == 11
    assert {p.suffix for p in dm.paths} == {".png", ".jpg", ".bmp"}
    batch = next(iter(dm.train_dataloader()))
    assert_signed_images(batch, (3, 8, 8))
    assert len(dm.split_indices("val")) == 2 and len(dm.split_indices("train")) == 9
    assert torch.equal(dm.real_samples(9), ImageFolderDataModule(
        folder, image_size=8, batch_size=4, val_fraction=0.2).real_samples(9))


def test_folder_resizes_then_center_crops(tmp_path):
    # 48x20: red left sixth, blue middle, green right sixth. Resizing to 8 high (19 wide) then
    # cropping the centre keeps only blue; a plain resize to 8x8 would keep all three colours.
    img = np.zeros((20, 48, 3), dtype=np.uint8)
    img[:, :8] = (255, 0, 0)
    img[:, 8:40] = (0, 0, 255)
    img[:, 40:] = (0, 255, 0)
    (tmp_path / "x").mkdir()
    Image.fromarray(img).save(tmp_path / "x" / "wide.png")
    x = ImageFolderDataModule(tmp_path, image_size=8, batch_size=1, val_fraction=0).real_samples(1)
    assert x.shape == (1, 3, 8, 8)
    r, g, b = x[0]
    assert b.min() > 0.9 and r.max() < -0.9 and g.max() < -0.9


def test_folder_grayscale_vs_rgb(tmp_path):
    write_image(tmp_path / "one.png", size=(10, 10), color=(255, 255, 255))
    write_image(tmp_path / "two.png", size=(10, 10), color=(0, 0, 0))
    kw = dict(image_size=4, batch_size=1, val_fraction=0)
    gray = ImageFolderDataModule(tmp_path, channels=1, **kw).real_samples(2)
    rgb = ImageFolderDataModule(tmp_path, channels=3, **kw).real_samples(2)
    assert gray.shape == (2, 1, 4, 4) and rgb.shape == (2, 3, 4, 4)
    assert sorted(v.item() for v in gray.mean((1, 2, 3))) == [-1.0, 1.0]
    with pytest.raises(ValueError, match=r"channels=4.*\[1, 3\]"):
        ImageFolderDataModule(tmp_path, channels=4)


def test_folder_missing_and_empty(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        ImageFolderDataModule(missing).setup("fit")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("no pictures here")
    with pytest.raises(ValueError, match=rf"no images found under .*{re.escape(str(empty))}"):
        ImageFolderDataModule(empty).setup("fit")


def test_folder_corrupt_file_is_named(folder):
    bad = folder / "b" / "deeper" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        ImageFolderDataModule(folder, batch_size=2).setup("fit")
    # verification off: setup passes (the file would fail later, when read)
    ImageFolderDataModule(folder, batch_size=2, verify_images=False).setup("fit")


def test_folder_cache_key_depends_on_path(tmp_path, folder):
    other = tmp_path / "elsewhere" / "pics"
    write_image(other / "x.png")
    a = ImageFolderDataModule(folder).cache_key("train", 10)
    b = ImageFolderDataModule(other).cache_key("train", 10)
    assert a != b and a.startswith("folder_pics_") and "3x64x64" in a


# -- torchvision -------------------------------------------------------------------------------


class FakeCIFAR10(torch.utils.data.Dataset):
    """Stands in for torchvision.datasets.CIFAR10: 50 32x32 RGB images, labelled."""

    calls: list[dict] = []

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        FakeCIFAR10.calls.append({"root": root, "train": train, "download": download})
        self.transform = transform
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), i % 10


@pytest.fixture
def fake_cifar(monkeypatch):
    FakeCIFAR10.calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    return FakeCIFAR10


def test_torchvision_transforms_shape_and_scaling(fake_cifar, tmp_path):
    dm = TorchvisionDataModule("cifar10", data_dir=tmp_path, batch_size=8, val_fraction=0.2)
    assert dm.data_shape == (3, 32, 32) and fake_cifar.calls == []  # __init__ reads nothing
    dm.prepare_data()
    assert fake_cifar.calls == []  # download=False: prepare_data does nothing
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert_signed_images(batch, (3, 32, 32))
    assert fake_cifar.calls == [{"root": str(tmp_path), "train": True, "download": False}]
    # native size and RGB: the tensor is exactly the image, scaled from [0, 255] to [-1, 1]
    first = dm.split_indices("train")[0].item()
    expected = torch.from_numpy(FakeCIFAR10(None).images[first]).permute(2, 0, 1) / 255 * 2 - 1
    assert torch.allclose(dm.real_samples(1)[0], expected, atol=1e-6)
    assert len(dm.split_indices("val")) == 10


def test_torchvision_resize_grayscale_and_download(fake_cifar, tmp_path):
    dm = TorchvisionDataModule(
        "cifar10", data_dir=tmp_path / "dl", download=True, image_size=16, channels=1,
        batch_size=4, hflip=True,
    )
    assert dm.data_shape == (1, 16, 16)
    dm.prepare_data()
    assert fake_cifar.calls[-1]["download"] is True and (tmp_path / "dl").is_dir()
    dm.setup("fit")
    assert_signed_images(next(iter(dm.train_dataloader())), (1, 16, 16))
    assert fake_cifar.calls[-1]["download"] is False  # setup never downloads


def test_torchvision_missing_data_says_how_to_download(tmp_path):
    dm = TorchvisionDataModule("mnist", data_dir=tmp_path)  # the real torchvision MNIST class
    assert dm.data_shape == (1, 28, 28)
    with pytest.raises(ValueError, match=r"mnist not found .*pass data\.download=true"):
        dm.setup("fit")


def test_torchvision_bad_arguments():
    with pytest.raises(ValueError, match=r"dataset='imagenet'.*'cifar10'"):
        TorchvisionDataModule("imagenet")
    with pytest.raises(ValueError, match=r"channels=2"):
        TorchvisionDataModule("mnist", channels=2)


# -- Hydra configs -----------------------------------------------------------------------------

EXPECTED_SHAPES = {
    "digits": (1, 16, 16),
    "toy2d": (2,),
    "mnist": (1, 32, 32),
    "fashion_mnist": (1, 32, 32),
    "cifar10": (3, 32, 32),
    "celeba": (3, 64, 64),
    "folder": (3, 64, 64),
}


def test_every_config_is_tested():
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == set(EXPECTED_SHAPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_config_instantiates(name, tmp_path):
    cfg = OmegaConf.merge(
        {"paths": {"data_dir": str(tmp_path / "data")}},
        {"data": OmegaConf.load(CONF_DIR / f"{name}.yaml")},
    )
    if name == "folder":
        assert OmegaConf.is_missing(cfg.data, "root")
        cfg.data.root = str(tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, DiffusionDataModule)
    assert dm.data_shape == EXPECTED_SHAPES[name] == data_shape_of(cfg.data)
    assert not (tmp_path / "data").exists()  # building a datamodule never touches the disk
    if name in ("mnist", "fashion_mnist", "cifar10", "celeba"):
        assert dm.data_dir == str(tmp_path / "data") and dm.download is False


def test_data_shape_of_rejects_other_things():
    assert data_shape_of(Toy2DDataModule()) == (2,)
    with pytest.raises(ValueError, match="DiffusionDataModule or a Hydra config"):
        data_shape_of(42)


def test_folder_corrupt_file_read_during_training_is_named(folder):
    bad = folder / "b" / "deeper" / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    dm = ImageFolderDataModule(folder, batch_size=2, verify_images=False)
    dm.setup("fit")
    files = dm.train_dataloader().dataset
    while hasattr(files, "dataset"):  # a Subset of the split
        files = files.dataset
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*verify_images=true"):
        files[files.paths.index(bad)]
