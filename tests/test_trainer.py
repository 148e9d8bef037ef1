"""The shared Trainer: the loop, accumulation, precision, scheduling, clipping, errors and host syncs."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_dataset, make_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import warmstart as ws
from warmstart.errors import ConfigError, DataError, NonFiniteLossError


def _sgd(model: nn.Module, lr: float = 0.1, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def test_fit_learns_and_evaluate_matches_a_manual_reference(dataset, loader):
    torch.manual_seed(0)
    model = make_mlp()
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), lr=0.02), max_epochs=15, progress=False)
    history = trainer.fit(loader, loader)
    assert len(history) == 15
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"} <= set(history[-1])
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]

    metrics = trainer.evaluate(DataLoader(dataset, batch_size=7))  # uneven batches: the mean must be per sample
    with torch.no_grad():
        model.eval()
        logits = model(dataset.tensors[0])
        expected_loss = F.cross_entropy(logits, dataset.tensors[1]).item()
        expected_acc = (logits.argmax(1) == dataset.tensors[1]).float().mean().item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(expected_acc)
    assert metrics["accuracy"] > 0.9


def _train(data: TensorDataset, batch_size: int, accumulate: int, epochs: int = 2) -> nn.Module:
    torch.manual_seed(0)
    model = make_mlp()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    ws.Trainer(model, _sgd(model), max_epochs=epochs, accumulate=accumulate, progress=False).fit(loader)
    return model


@pytest.mark.parametrize("n", [64, 40])  # 40 = windows of 16, 16 and a final 8
def test_accumulation_gives_the_update_of_a_k_times_larger_batch(n):
    data = make_dataset(n=n)
    accumulated = _train(data, batch_size=8, accumulate=2)
    large = _train(data, batch_size=16, accumulate=1)
    for a, b in zip(accumulated.parameters(), large.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scheduler_steps_once_per_optimizer_step(dataset):
    model = make_mlp()
    optimizer = _sgd(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    loader = DataLoader(dataset, batch_size=16)  # 4 micro-batches -> 2 optimizer steps per epoch
    ws.Trainer(model, optimizer, scheduler=scheduler, accumulate=2, max_epochs=2, progress=False).fit(loader)
    assert scheduler.last_epoch == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)


def test_scheduler_by_name_spans_the_whole_run(dataset):
    model = make_mlp()
    trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.1}, scheduler={"name": "cosine", "warmup_steps": 2},
                         max_epochs=3, progress=False)
    trainer.fit(DataLoader(dataset, batch_size=16))  # 4 steps per epoch, 12 in all
    assert trainer.scheduler.last_epoch == 12
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine reaches its floor


def test_gradient_clipping_matches_a_manual_reference():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    model = nn.Linear(3, 1)
    expected = [p.detach().clone() for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    clip = 0.05
    assert norm > clip
    expected = [p - 1.0 * g * (clip / (norm + 1e-6)) for p, g in zip(expected, grads)]
    trainer = ws.Trainer(model, _sgd(model, lr=1.0, momentum=0.0), loss_fn=F.mse_loss, grad_clip=clip, progress=False)
    trainer.fit([(x, y)])
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_bf16_autocast_trains_on_cpu(dataset, loader):
    torch.manual_seed(0)
    model = make_mlp()
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), lr=0.02), precision="bf16", max_epochs=10,
                         progress=False)
    history = trainer.fit(loader, loader)
    assert history[-1]["val_accuracy"] > 0.8
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model


def test_precision_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown precision '64'"):
        ws.Trainer(make_mlp(), precision="64", device="cpu")
    with pytest.raises(ConfigError, match="use precision='bf16'"):
        ws.Trainer(make_mlp(), precision="16", device="cpu")


class _NaNAtCall:
    """cross-entropy that returns NaN on one chosen call."""

    def __init__(self, bad_call: int):
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = F.cross_entropy(output, target)
        return loss * float("nan") if self.calls == self.bad_call else loss


def test_nonfinite_loss_is_reported_at_the_next_log_with_its_step(dataset):
    loader = DataLoader(dataset, batch_size=8)  # 8 steps per epoch
    trainer = ws.Trainer(make_mlp(), loss_fn=_NaNAtCall(3), log_every=4, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 1\): loss=nan"):
        trainer.fit(loader)
    assert trainer.global_step == 4  # found at the read after step 4, not by a sync every step


def test_nonfinite_skip_mode_skips_the_step_and_goes_on(dataset):
    model = make_mlp()
    trainer = ws.Trainer(model, loss_fn=_NaNAtCall(3), nonfinite="skip", log_every=2, progress=False)
    history = trainer.fit(DataLoader(dataset, batch_size=8))
    assert trainer.skipped_steps == 1
    assert math.isfinite(history[-1]["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_input_gets_clear_errors(tmp_path, dataset):
    empty = DataLoader(TensorDataset(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(DataError, match="train_loader is empty"):
        ws.Trainer(make_mlp(), progress=False).fit(empty)

    wide_labels = TensorDataset(dataset.tensors[0], torch.arange(64) % 6)
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\).*a batch has label 5.*num_classes=6"):
        ws.Trainer(make_mlp(classes=3), progress=False).fit(DataLoader(wide_labels, batch_size=16))

    model = make_mlp()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"2 trainable parameters are not in the optimizer: 3.weight, 3.bias"):
        ws.Trainer(model, optimizer, progress=False).fit(DataLoader(dataset, batch_size=16))

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="out_dir .* is not writable"):
        ws.Trainer(make_mlp(), out_dir=str(blocker / "run"))

    with pytest.raises(ConfigError, match="unknown Trainer option 'max_epoch' \\(did you mean 'max_epochs'\\?\\)"):
        ws.Trainer(make_mlp(), max_epoch=3)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm' \\(did you mean 'adam'\\?\\); valid: adagrad, adam"):
        ws.Trainer(make_mlp(), {"name": "adamm"})
    with pytest.raises(ConfigError, match="must be >= 1"):
        ws.Trainer(make_mlp(), accumulate=0)


class _SyncCounter:
    """Count calls made by warmstart's own code that copy a tensor's value to the host.

    Each is a device sync on a GPU. PyTorch's own host reads (the CPU-side step counter of Adam,
    the sampler's index list) are not device syncs and are not counted.
    """

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
    PACKAGE = str(Path(ws.__file__).parent)

    def __init__(self):
        self.count = 0

    @contextlib.contextmanager
    def watch(self):
        originals = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def counted(original):
            def wrapper(*args, **kwargs):
                if sys._getframe(1).f_code.co_filename.startswith(self.PACKAGE):
                    self.count += 1
                return original(*args, **kwargs)
            return wrapper

        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(original))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def _syncs_for(steps: int) -> int:
    data = make_dataset(n=8 * steps)
    model = make_mlp(dropout=0.1)
    trainer = ws.Trainer(model, torch.optim.AdamW(model.parameters()), log_every=1000, progress=False,
                         scheduler={"name": "cosine"}, grad_clip=1.0)
    with _SyncCounter().watch() as counter:
        trainer.fit(DataLoader(data, batch_size=8, shuffle=True))
    return counter.count


def test_the_hot_loop_reads_nothing_from_the_device_between_logs():
    # host reads happen at fixed points (first-batch label check, epoch end), never per step
    few, many = _syncs_for(steps=5), _syncs_for(steps=40)
    assert 0 < few == many


class _L1Trainer(ws.Trainer):
    """A subclass the way users write one: override compute_loss and add a logged term."""

    def compute_loss(self, batch):
        inputs, target = batch
        output = self.model(inputs)
        l1 = sum(p.abs().sum() for p in self.unwrapped_model.parameters())
        ce = F.cross_entropy(output, target)
        return {"loss": ce + 1e-4 * l1, "output": output, "ce": ce, "l1": l1}


def test_subclass_terms_are_logged_per_epoch(dataset, loader):
    history = _L1Trainer(make_mlp(), max_epochs=2, progress=False).fit(loader, loader)
    assert {"train_loss", "train_ce", "train_l1", "val_ce", "val_l1", "val_accuracy"} <= set(history[-1])
    assert history[-1]["train_loss"] == pytest.approx(history[-1]["train_ce"] + 1e-4 * history[-1]["train_l1"], rel=1e-4)


def test_plain_log_lines_every_log_every_steps(capsys, dataset):
    ws.Trainer(make_mlp(), log_every=2, max_epochs=1).fit(DataLoader(dataset, batch_size=16))  # 4 steps
    out = capsys.readouterr().out.splitlines()
    step_lines = [line for line in out if line.startswith("epoch 1 step")]
    assert [line.split()[3] for line in step_lines] == ["2", "4"]
    assert all("loss" in line and "lr" in line and "samples_per_s" in line for line in step_lines)
    assert out[-1].startswith("epoch 1: train_loss")


def test_channels_last_and_compile_are_opt_in(dataset):
    images = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,)))
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    trainer = ws.Trainer(conv, channels_last=True, compile="eager", max_epochs=2, progress=False)
    trainer.fit(DataLoader(images, batch_size=8))
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.model is not conv  # the compiled wrapper
    assert set(trainer.unwrapped_model.state_dict()) == set(conv.state_dict())  # no "_orig_mod." keys


def test_accuracy_is_counted_for_dict_batches_with_a_labels_key():
    class DictTrainer(ws.Trainer):
        def compute_loss(self, batch):
            output = self.model(batch["pixels"])
            return {"loss": torch.nn.functional.cross_entropy(output, batch["labels"]), "output": output}

    model = torch.nn.Linear(4, 2)
    batches = [{"pixels": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))} for _ in range(2)]
    metrics = DictTrainer(model, progress=False).evaluate(batches)
    with torch.no_grad():
        correct = sum((model(b["pixels"]).argmax(1) == b["labels"]).sum().item() for b in batches)
    assert metrics["accuracy"] == pytest.approx(correct / 16)


def test_split_batch_reads_sequences_and_dicts_and_names_a_missing_target():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert ws.split_batch((x, y, "index"))[1] is y and ws.split_batch({"image": x, "labels": y})[1] is y
    assert ws.split_batch((x,), require_target=False) == (x, None)
    with pytest.raises(DataError, match="expects batches of \\(inputs, target"):
        ws.split_batch((x,))


def _no_indexing_loss(output, target):
    return (output.float().mean(1) - target.float()).pow(2).mean()  # reads labels without indexing with them


@pytest.mark.parametrize("loss_fn, steps", [(None, 5), (_no_indexing_loss, 8)])
def test_labels_out_of_range_on_a_later_batch_are_caught(dataset, loss_fn, steps):
    labels = dataset.tensors[1].clone()
    labels[40] = 7  # batch 6 of 8: past the first batch, which is checked at once
    loader = DataLoader(TensorDataset(dataset.tensors[0], labels), batch_size=8)
    trainer = ws.Trainer(make_mlp(classes=3), loss_fn=loss_fn, log_every=4, progress=False)
    with pytest.raises(DataError, match="a batch has label 7"):
        trainer.fit(loader)
    # cross-entropy indexes with the labels, so on the CPU it fails on batch 6 itself and the check is read then (no
    # step on it); a loss that does not index runs on, and the check is read at the log after step 8 (no host sync
    # per step before it)
    assert trainer.global_step == steps


def test_labels_kept_for_the_read_are_checked_before_a_checkpoint_is_written(dataset, tmp_path):
    labels = dataset.tensors[1].clone()
    labels[20] = 7  # batch 3 of 8, under a loss that does not index: nothing fails until the checks are read
    loader = DataLoader(TensorDataset(dataset.tensors[0], labels), batch_size=8)
    trainer = ws.Trainer(make_mlp(classes=3), loss_fn=_no_indexing_loss, log_every=100, save_every=2,
                         out_dir=tmp_path, progress=False)
    with pytest.raises(DataError, match="a batch has label 7"):
        trainer.fit(loader)
    assert trainer.global_step == 4  # the checkpoint after step 4 read the labels kept since step 2, and refused
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["global_step"] == 2  # the checkpoint on disk is the one before the bad batch


class _AlwaysNaN:
    def __call__(self, output, target):
        return F.cross_entropy(output, target) * float("nan")


def test_skip_mode_that_skips_every_step_of_an_epoch_is_an_error(dataset):
    trainer = ws.Trainer(make_mlp(), loss_fn=_AlwaysNaN(), nonfinite="skip", progress=False)
    with pytest.raises(NonFiniteLossError, match="every one of the 4 steps of epoch 1 had a NaN/inf loss"):
        trainer.fit(DataLoader(dataset, batch_size=16))


def test_skip_mode_under_fp16_loss_scaling_skips_without_touching_the_scaler(dataset):
    torch.manual_seed(0)
    model = make_mlp()
    trainer = ws.Trainer(model, loss_fn=_NaNAtCall(3), nonfinite="skip", log_every=2, progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # fp16's loss scaling, on the CPU
    history = trainer.fit(DataLoader(dataset, batch_size=8))
    assert trainer.skipped_steps == 1 and trainer.global_step == 8 and math.isfinite(history[-1]["train_loss"])
    assert trainer.scaler.get_scale() == 2.0**8  # no inf check was recorded for the skipped step, none failed


def test_skip_mode_skips_the_whole_accumulation_window(dataset):
    torch.manual_seed(0)
    model = make_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    loss = _NaNAtCall(2)  # the second micro-batch of the first window
    trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=loss, nonfinite="skip",
                         accumulate=2, max_steps=1, progress=False)
    trainer.fit(DataLoader(dataset, batch_size=8))
    assert trainer.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no half-window update


def test_evaluate_refuses_non_finite_outputs_rather_than_reporting_an_accuracy():
    data = [(torch.full((8, 10), float("nan")), torch.randint(0, 3, (8,)))]
    with pytest.raises(NonFiniteLossError, match="evaluation: the model's outputs or loss are NaN/inf \\(8 of 8"):
        ws.Trainer(make_mlp(), progress=False).evaluate(data)


def test_max_steps_must_be_positive():
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="'max_steps' must be >= 1"):
            ws.Trainer(make_mlp(), max_steps=bad)


class _Stream:
    """A loader without len(): the trainer cannot know where the epoch ends."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


@pytest.mark.parametrize("n", [40, 56])  # the last window holds 1 or 3 of 4 micro-batches
def test_a_loader_without_len_scales_its_last_short_window_by_its_true_length(n):
    data = make_dataset(n=n)
    torch.manual_seed(0)
    streamed = make_mlp()
    ws.Trainer(streamed, _sgd(streamed), accumulate=4, max_epochs=2, progress=False).fit(
        _Stream(DataLoader(data, batch_size=4)))
    torch.manual_seed(0)
    sized = make_mlp()
    ws.Trainer(sized, _sgd(sized), accumulate=4, max_epochs=2, progress=False).fit(DataLoader(data, batch_size=4))
    for a, b in zip(streamed.parameters(), sized.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ema_with_best_checkpoint_saves_the_weights_it_measured(tmp_path, dataset, loader):
    torch.manual_seed(0)
    ema = ws.EMA(decay=0.9)
    trainer = ws.Trainer(make_mlp(), {"name": "adam", "lr": 0.05}, max_epochs=3, out_dir=str(tmp_path),
                         progress=False, callbacks=[ema, ws.BestCheckpoint(monitor="val_loss")])
    history = trainer.fit(loader, DataLoader(dataset, batch_size=64))
    weights, metadata = ws.load_weights(tmp_path / "best.safetensors")
    assert metadata["weights"] == "averaged (EMA)"
    model = make_mlp()
    model.load_state_dict(weights)
    measured = ws.Trainer(model, progress=False).evaluate(DataLoader(dataset, batch_size=64))["loss"]
    assert measured == pytest.approx(min(h["val_loss"] for h in history), rel=1e-5)


def test_seed_none_follows_torch_manual_seed_and_is_recorded(tmp_path):
    import yaml

    def run(global_seed: int, folder: str) -> tuple[int, list[float]]:
        torch.manual_seed(global_seed)
        model = make_mlp()
        loader = DataLoader(make_dataset(), batch_size=16, shuffle=True)
        trainer = ws.Trainer(model, {"name": "sgd", "lr": 0.1}, max_epochs=1, progress=False,
                             out_dir=str(tmp_path / folder))
        trainer.fit(loader)
        return trainer.seed, [float(p.detach().sum()) for p in model.parameters()]

    seed_a, weights_a = run(1, "a")
    seed_b, weights_b = run(2, "b")
    assert (seed_a, weights_a) == run(1, "a2")  # the caller's seed decides the run ...
    assert seed_a != seed_b and weights_a != weights_b  # ... so runs meant to differ do
    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert recorded["trainer"]["seed"] == seed_a
    assert ws.load_checkpoint(tmp_path / "a" / "last.pt")["config"]["trainer"]["seed"] == seed_a


def test_label_checks_fold_long_windows_and_follow_a_changed_class_count():
    from warmstart._epoch import DeviceChecks, MetricWindow

    window = MetricWindow(torch.device("cpu"))
    for _ in range(DeviceChecks.fold_every + 3):
        window.check_labels(torch.zeros(2, 3), torch.tensor([0, 2]))
    assert len(window._labels) < 5  # the kept targets were folded into the checks: not one tensor per step kept
    assert all(len(kept) < 5 for kept in window.checks.values.values())
    window.check_labels(torch.zeros(2, 5), torch.tensor([4, 1]))  # label 4 is fine for a model with 5 outputs
    assert window.failure() is None
    window.check_labels(torch.zeros(2, 3), torch.tensor([4, 1]))  # and out of range for one with 3
    with pytest.raises(DataError, match="labels must be in \\[0, 3\\).*a batch has label 4"):
        window.verify()


@pytest.mark.parametrize("unfreeze_at", [None, 2])
def test_gradient_accumulators_are_built_once_per_fit_and_for_parameters_unfrozen_in_it(dataset, unfreeze_at):
    # autograd frees a parameter's accumulator with the graph that refers to it; the Trainer keeps only the
    # detached loss, so it holds them (as DDP does): a hook on one then fires at every later step
    model = make_mlp()
    first, last = model[0].weight, model[3].weight
    if unfreeze_at is not None:
        first.requires_grad_(False)
    fired: dict[str, list[int]] = {"first": [], "last": []}

    class Hooks(ws.Callback):
        def on_train_step_end(self, trainer):
            if unfreeze_at is not None and trainer.global_step == unfreeze_at:
                first.requires_grad_(True)
                trainer.refresh_trainable()
            for name, p in (("first", first), ("last", last)):
                if trainer.global_step == (unfreeze_at or 1):
                    node = p.view_as(p).grad_fn.next_functions[0][0]
                    node.register_hook(lambda *grads, name=name: fired[name].append(trainer.global_step))

    trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[Hooks()], max_epochs=1,
                         progress=False)
    trainer.fit(DataLoader(dataset, batch_size=8))  # 8 steps
    # registered at the end of step S, the hooks run in the backward of steps S+1..8 (global_step is then S..7)
    start = unfreeze_at or 1
    assert fired == {"first": list(range(start, 8)), "last": list(range(start, 8))}
    assert trainer._grad_accumulators == []  # released when fit ends: a model changed afterwards is not held


def test_gradient_accumulators_are_released_when_fit_fails(dataset):
    model = make_mlp()
    x, y = dataset.tensors
    bad = TensorDataset(x, torch.full_like(y, 99))  # labels outside the model's outputs: fit raises at step 1
    trainer = ws.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1, progress=False)
    with pytest.raises(DataError, match="labels must be in"):
        trainer.fit(DataLoader(bad, batch_size=8))
    assert trainer._grad_accumulators == []
