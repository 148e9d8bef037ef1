"""build_data: bundled sets with shots, image folders through a DataLoader, offline torchvision errors."""

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from warmstart.data import DataConfig, InMemoryLoader, build_data
from warmstart.errors import ConfigError, DataError


def test_bundled_set_with_shots_keeps_the_test_split_and_the_unlabelled_pool():
    bundle = build_data(DataConfig(name="digits", shots=5, augment="digits", batch_size=16))
    assert isinstance(bundle.train, InMemoryLoader) and bundle.train.dataset_size == 50
    assert bundle.test.dataset_size + len(bundle.pool) == 1797 and bundle.train.transform is not None
    assert bundle.num_classes == 10 and bundle.image_shape == (1, 28, 28) and bundle.fill < 0


def test_image_folder_goes_through_a_shuffled_dataloader(tmp_path):
    for split in ("train", "val"):
        for name, colour in (("red", (250, 0, 0)), ("blue", (0, 0, 250))):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 10), color=colour).save(tmp_path / split / name / f"{i}.png")
    bundle = build_data(DataConfig(name="image_folder", root=str(tmp_path), size=8, batch_size=4, augment="cifar"))
    assert isinstance(bundle.train, DataLoader) and bundle.num_classes == 2 and bundle.image_shape == (3, 8, 8)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32


def test_settings_that_cannot_work_are_named(tmp_path):
    with pytest.raises(ConfigError, match="data.shots works with the bundled sets"):
        build_data(DataConfig(name="cifar10", shots=5))
    with pytest.raises(ConfigError, match="needs data.root"):
        build_data(DataConfig(name="image_folder"))
    with pytest.raises(DataError, match="could not load cifar10.*needs internet"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path), download=False))


def test_a_mapping_is_read_as_the_data_section_and_a_bad_key_named():
    bundle = build_data({"name": "digits", "shots": 3, "val_per_class": 2, "batch_size": 10})
    assert len(bundle.train.inputs) == 30 and len(bundle.val.inputs) == 20
    with pytest.raises(ConfigError, match=r"'data.shot' \(did you mean 'shots'"):
        build_data({"name": "digits", "shot": 3})
