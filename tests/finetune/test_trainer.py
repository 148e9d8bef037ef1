"""FinetuneTrainer: methods, discriminative rates, the linear-probe cache, gradual unfreezing, proximal, resume."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.errors import ConfigError
from warmstart.finetune import FinetuneTrainer, Full, Gradual, LinearProbe, Partial
from warmstart.models import small_cnn
from warmstart.pretrain import Anchor, ProximalTrainer


def _data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long())


def _model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return small_cnn(num_classes=4, width=4, dropout=dropout)


def _names(trainer: FinetuneTrainer) -> list[str]:
    return [g["name"] for g in trainer.optimizer.param_groups]


def test_linear_probe_trains_only_the_head_and_caches_features_once():
    model = _model()
    calls = []
    model.block1.register_forward_hook(lambda *args: calls.append(1))
    trainer = FinetuneTrainer(model, {"name": "sgd", "lr": 0.1}, method="linear_probe", max_epochs=5, progress=False)
    assert set(_names(trainer)) == {"head"}
    loader = DataLoader(_data(), batch_size=8)
    history = trainer.fit(loader, loader)
    assert len(calls) == 2 * 6  # one pass over the training and one over the validation loader, not one per epoch
    assert "val_accuracy" in history[-1]

    slow = _model()
    FinetuneTrainer(slow, {"name": "sgd", "lr": 0.1}, method=LinearProbe(cache_features=False), max_epochs=5,
                    progress=False).fit(loader)
    for a, b in zip(model.parameters(), slow.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same training, only faster
    metrics = trainer.evaluate(loader)  # images, not features: the whole model runs
    assert metrics["accuracy"] == pytest.approx(history[-1]["val_accuracy"])


def test_partial_full_and_layer_decay_rates():
    trainer = FinetuneTrainer(_model(), {"name": "sgd", "lr": 1.0}, method=Partial(k=2), progress=False)
    assert _names(trainer) == ["head", "head", "block3", "block3"]
    assert not trainer.unwrapped_model.block2[0].weight.requires_grad
    trainer = FinetuneTrainer(_model(), {"name": "sgd", "lr": 1.0}, method="full", progress=False)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"head": 1.0, "block3": 0.1, "block2": 0.1, "block1": 0.1}
    trainer = FinetuneTrainer(_model(), {"name": "sgd", "lr": 1.0}, method=Full(layer_decay=0.5), progress=False)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"head": 1.0, "block3": 0.5, "block2": 0.25, "block1": 0.125}
    pretrained = _model().state_dict()
    reinit = FinetuneTrainer(_model(), method=Partial(k=1, reinit_rest=True), progress=False).unwrapped_model
    assert torch.equal(reinit.block1[0].weight, pretrained["block1.0.weight"])
    assert not torch.equal(reinit.block2[0].weight, pretrained["block2.0.weight"])


class _LrLog(ws.Callback):
    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer):
        self.epochs.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})


def test_gradual_unfreezing_adds_groups_that_follow_the_schedule():
    log = _LrLog()
    trainer = FinetuneTrainer(_model(), {"name": "adam", "lr": 1e-2}, method=Gradual(head_epochs=1, unfreeze_every=1),
                              scheduler={"name": "cosine"}, max_epochs=4, callbacks=[log], progress=False)
    trainer.fit(DataLoader(_data(), batch_size=8, shuffle=True))
    assert [sorted(e) for e in log.epochs] == [["head"], ["block3", "head"], ["block2", "block3", "head"],
                                               ["block1", "block2", "block3", "head"]]
    factor = trainer.scheduler.lr_lambdas[0](trainer.scheduler.last_epoch)
    for group in trainer.optimizer.param_groups:  # every group, old or new, on the same cosine
        assert group["lr"] == pytest.approx(group["initial_lr"] * factor)
    assert log.epochs[1]["block3"] == pytest.approx(0.1 * log.epochs[1]["head"])


def test_resuming_in_the_middle_of_gradual_unfreezing_is_exact(tmp_path):
    def run(out_dir, stop_after=None, resume=None):
        callbacks = []
        if stop_after:
            class Stop(ws.Callback):
                def on_epoch_end(self, trainer, metrics):
                    trainer.should_stop = trainer.epoch + 1 == stop_after
            callbacks.append(Stop())
        trainer = FinetuneTrainer(_model(dropout=0.2), {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                                  method=Gradual(head_epochs=1), scheduler={"name": "cosine"}, proximal=10.0,
                                  max_epochs=4, out_dir=str(out_dir), callbacks=callbacks, progress=False)
        trainer.fit(DataLoader(_data(), batch_size=8, shuffle=True), resume=resume)
        return trainer

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    resumed = run(tmp_path / "b", resume="last")
    for a, b in zip(straight.unwrapped_model.state_dict().values(), resumed.unwrapped_model.state_dict().values()):
        assert torch.equal(a, b)
    assert _names(straight) == _names(resumed)


def test_proximal_reuses_the_pretrain_term_with_the_head_unanchored():
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    finetuned = _model()
    FinetuneTrainer(finetuned, {"name": "sgd", "lr": 0.01, "momentum": 0.9}, method=Full(backbone_lr_mult=1.0),
                    proximal=5.0, max_epochs=2, progress=False).fit(loader)
    reference = _model()
    head = ["head.weight", "head.bias"]
    optimizer = FinetuneTrainer(reference, {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                                method=Full(backbone_lr_mult=1.0), progress=False).optimizer
    ProximalTrainer(reference, optimizer, lam=5.0, anchor=Anchor.from_model(reference, exclude=head), max_epochs=2,
                    progress=False).fit(loader)
    for a, b in zip(finetuned.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_bad_method_input_is_refused():
    with pytest.raises(ConfigError, match="unknown fine-tuning method 'linear' \\(did you mean 'linear_probe'\\?\\)"):
        FinetuneTrainer(_model(), method="linear")
    with pytest.raises(ConfigError, match="method 'gradual' has no option 'unfreeze_evry' \\(did you mean 'unfreeze_every'"):
        FinetuneTrainer(_model(), method={"name": "gradual", "unfreeze_evry": 2})
    with pytest.raises(ConfigError, match="Partial\\(k=5\\) asks to freeze more layer groups than the backbone has \\(3\\)"):
        FinetuneTrainer(_model(), method=Partial(k=5))
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = FinetuneTrainer(model, optimizer, method="gradual", max_epochs=2, progress=False,
                              scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1))
    with pytest.raises(ConfigError, match="StepLR cannot follow"):
        trainer.fit(DataLoader(_data(), batch_size=8))


def _fit_gradual(**method: object) -> tuple[FinetuneTrainer, list[dict[str, float]]]:
    trainer = FinetuneTrainer(_model(), {"name": "adam", "lr": 1e-2}, max_epochs=2, progress=False, seed=0, **method)
    return trainer, trainer.fit(DataLoader(_data(), batch_size=16))


def test_the_deprecated_strategy_keyword_warns_at_the_caller_and_trains_as_method():
    trainer, history = _fit_gradual(method="gradual")
    with pytest.warns(DeprecationWarning, match="use method='gradual'") as caught:
        old, old_history = _fit_gradual(strategy="gradual")
    assert [w.filename for w in caught] == [__file__]  # the line that spelled it, not the library
    assert isinstance(old.method, Gradual) and old.config.strategy == "auto" and _names(old) == _names(trainer)
    assert [h["train_loss"] for h in old_history] == [h["train_loss"] for h in history]
    for a, b in zip(old.unwrapped_model.parameters(), trainer.unwrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="method"):  # a dict or a Method object too
        assert FinetuneTrainer(_model(), strategy={"name": "partial", "k": 2}, progress=False).method == Partial(k=2)


def test_the_deprecated_strategy_keyword_warns_at_the_user_code_of_a_subclass():
    class MyTrainer(FinetuneTrainer):
        def __init__(self, model: torch.nn.Module, **kwargs: object):
            super().__init__(model, **kwargs)

    with pytest.warns(DeprecationWarning, match="method") as caught:
        line = sys._getframe().f_lineno + 1
        MyTrainer(_model(), strategy="linear_probe", progress=False)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


@pytest.mark.parametrize("parallelism", ["auto", "ddp"])
def test_strategy_is_the_trainers_parallelism_beside_the_method(parallelism):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation: strategy= here means what it means on every Trainer
        trainer = FinetuneTrainer(_model(), method="gradual", strategy=parallelism, progress=False)
        default = FinetuneTrainer(_model(), strategy=parallelism, progress=False)
    assert trainer.config.strategy == parallelism and isinstance(trainer.method, Gradual)
    assert default.config.strategy == parallelism and isinstance(default.method, Full)  # the default method
    via_config = FinetuneTrainer(_model(), method="gradual", config=ws.TrainerConfig(strategy=parallelism))
    assert via_config.config.strategy == parallelism


def test_the_method_and_strategy_words_do_not_mix_up():
    with pytest.raises(ConfigError, match="both name the fine-tuning method"):
        FinetuneTrainer(_model(), method="full", strategy="gradual")
    with pytest.raises(ConfigError, match="unknown strategy 'fsdb' \\(did you mean 'fsdp'\\?\\): strategy is the parallelism"):
        FinetuneTrainer(_model(), strategy="fsdb")
    with pytest.raises(ConfigError, match="unknown fine-tuning method 'fsdp'"):  # method= never takes a parallelism
        FinetuneTrainer(_model(), method="fsdp")


def test_the_old_names_of_the_method_classes_still_import_with_a_warning():
    import warmstart.finetune as finetune

    for old, new in [("Strategy", "Method"), ("STRATEGIES", "METHODS"), ("make_strategy", "build_method")]:
        with pytest.warns(DeprecationWarning, match=f"use warmstart.finetune.{new}"):
            assert getattr(finetune, old) is getattr(finetune, new)
    assert "Strategy" not in finetune.__all__ and "Method" in finetune.__all__


def test_the_linear_probe_cache_keeps_a_deterministic_transform_and_drops_augmentation():
    from warmstart.data import InMemoryLoader, build_augmentation

    torch.manual_seed(0)
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 3, (24,))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    to_rgb = ws.models.ImageInput(None, mean=(0.5,) * 3, std=(0.5,) * 3)  # the model reads 3 channels only
    trainer = FinetuneTrainer(model, {"name": "sgd", "lr": 0.1}, method="linear_probe", max_epochs=1, progress=False)
    features, _, _ = trainer._cache_features(InMemoryLoader(x, y, batch_size=8, transform=to_rgb))
    with torch.no_grad():
        expected = model[1](model[0](to_rgb(x)))
    torch.testing.assert_close(features, expected)  # was dropped as if augmentation: the conv got 1 channel and failed
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    trainer = FinetuneTrainer(gray, {"name": "sgd", "lr": 0.1}, method="linear_probe", max_epochs=1, progress=False)
    augmented = InMemoryLoader(x, y, batch_size=8, transform=build_augmentation("digits", batched=True))
    features, _, _ = trainer._cache_features(augmented)
    with torch.no_grad():
        torch.testing.assert_close(features, gray[1](gray[0](x)))  # random augmentation is left out of the cached view


def test_the_feature_cache_keeps_the_fixed_steps_of_a_transform_with_a_random_one():
    """Issue 37: with any random step the cache dropped the whole transform, caching raw 1-channel [0, 1] images
    for a network that reads 3 channels in [-1, 1]."""
    from torchvision.transforms import v2

    from warmstart.data import InMemoryLoader
    from warmstart.efficientnet import efficientnet_lite_input

    images, labels = torch.rand(24, 1, 12, 12), torch.arange(24) % 3
    fixed = efficientnet_lite_input(0, size=16)
    transform = v2.Compose([v2.RandomHorizontalFlip(), fixed])
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, in_channels=3, width=4)
    trainer = FinetuneTrainer(model, {"name": "sgd", "lr": 0.1}, method="linear_probe", max_epochs=1, progress=False)
    features, _, _ = trainer._cache_features(InMemoryLoader(images, labels, batch_size=8, transform=transform))
    model.eval()
    with torch.no_grad():
        expected = model.pool(model.block3(model.block2(model.block1(fixed(images)))))
    torch.testing.assert_close(features, expected)  # the features of the network's real input, unflipped


def test_freeze_bn_normalises_with_the_pretrained_statistics_while_the_affine_weights_train():
    torch.manual_seed(0)
    model = _model()
    bn = model.block1[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    weight = bn.weight.detach().clone()
    trainer = FinetuneTrainer(model, {"name": "sgd", "lr": 0.1}, method="full", freeze_bn=True, max_epochs=2,
                              progress=False)
    trainer.fit(DataLoader(_data(), batch_size=8, shuffle=True))
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])  # never updated
    assert not torch.equal(bn.weight, weight) and bn.weight.requires_grad  # its affine weights trained
    model.train()
    assert not bn.training and model.block1[0].training  # held in eval mode through model.train()
    plain = _model()
    FinetuneTrainer(plain, {"name": "sgd", "lr": 0.1}, method="full", max_epochs=1, progress=False).fit(
        DataLoader(_data(), batch_size=8))
    assert not torch.equal(plain.block1[1].running_mean, stats[0])  # without it the statistics move
    with pytest.raises(ConfigError, match="pass one of them"):
        FinetuneTrainer(_model(), method="full", train_bn=True, freeze_bn=True)
