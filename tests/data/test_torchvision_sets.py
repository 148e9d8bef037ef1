"""torchvision sets: offline errors that say what to do, ImageFolder trees, FakeData through the Trainer."""

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import FakeData
from torchvision.transforms import v2

import warmstart as ws
from warmstart.data import image_folder_splits, torchvision_splits
from warmstart.errors import DataError


def test_missing_files_offline_give_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not load cifar10 from .*needs internet.*mnist5k"):
        torchvision_splits("cifar10", root=tmp_path, download=False)
    with pytest.raises(DataError, match="unknown torchvision data set 'cifar'.*did you mean 'cifar10'"):
        torchvision_splits("cifar")


def test_a_failed_download_is_reported_not_raised_deep(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match="could not load mnist.*Temporary failure in name resolution"):
        torchvision_splits("mnist", root=tmp_path / "cache" / "data", download=True)
    assert list(tmp_path.iterdir()) == []  # the folders the failed download made are gone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(DataError):
        torchvision_splits("mnist", root=tmp_path / "mine", download=True)
    assert (tmp_path / "mine" / "keep.txt").exists()  # a folder that was there is never removed


def test_image_folder_splits(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 12), color=(200, 10, 10)).save(tmp_path / split / name / "a.png")
    train, val = image_folder_splits(tmp_path, image_size=16)
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and train.classes == ["cat", "dog"]
    with pytest.raises(DataError, match="does not exist; expected"):
        image_folder_splits(tmp_path / "nothing")


def test_fake_data_trains_through_the_trainer():
    data = FakeData(size=16, image_size=(3, 8, 8), num_classes=3,
                    transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.1}, max_epochs=1, progress=False)
    trainer.fit(DataLoader(data, batch_size=4))
    assert 0 <= trainer.evaluate(DataLoader(data, batch_size=8))["accuracy"] <= 1
