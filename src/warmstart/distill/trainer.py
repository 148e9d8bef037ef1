"""DistillTrainer: train a student on one or more frozen teachers' soft labels, online or from cached logits."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from warmstart import distributed
from warmstart._batches import run_model, split_batch
from warmstart._runtime import move_to_device
from warmstart.data.augment import is_random
from warmstart.data.loaders import InMemoryLoader, WithIndex, rebuild_loader
from warmstart.distill.cache import (AugmentedViews, SampleFingerprint, TeacherCache, dataset_fingerprint,
                                     model_fingerprint, probe_indices)
from warmstart.distill.hints import FeatureHint, FeatureTaps, make_adapter
from warmstart.distill._validation import hard_label_sums
from warmstart.distill.losses import COMBINE, check_kd_options, check_logits, kd_terms
from warmstart.errors import ConfigError, DataError
from warmstart.trainer import Trainer


class DistillTrainer(Trainer):
    """Distil frozen teachers into a student with :func:`warmstart.distill.kd_loss`.

    Each step computes ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(student, y)``
    plus ``weight * MSE(adapter(student_feature), teacher_feature)`` per feature hint. The
    teachers are frozen, in eval mode, on the training device, and run under ``no_grad`` and the
    trainer's autocast. They are never saved into the student's checkpoints; their identity
    (class, parameter count, weights hash) is recorded there instead. Validation measures the
    student alone: its cross-entropy (``val_loss``) and accuracy.

    With ``cache_teacher=True`` the teachers run once over the training set and their logits go
    into one fp16 memory-mapped file (``cache_path``, by default ``out_dir/teacher_logits.npy``),
    reused every epoch and by later runs whose data set and teachers match. Batches get sample
    indices automatically (``InMemoryLoader(with_index=True)`` or :class:`warmstart.data.WithIndex`),
    labelled or not. Stale logits are impossible to miss: every training batch is compared on the
    device with a per-sample fingerprint stored in the cache (read at the log interval), so
    changed, moved or randomly varying samples raise a :class:`DataError`; so does a teacher that
    answers the cache's probe samples differently than when it was built (changed outside its
    tensors, e.g. an output-scale attribute). Random augmentation is therefore refused (a
    deterministic ``InMemoryLoader`` transform, such as a normalisation, is cached through it);
    wrap the data in :class:`warmstart.distill.AugmentedViews` to cache a fixed number of
    augmented views per sample instead. Unlabelled batches ``(x,)`` (a transfer set that
    the teacher labels, e.g. ``InMemoryLoader(images, None)``) need ``alpha=1``. Text batches
    (dicts of ``input_ids``, ``attention_mask``, ``labels``) work when student and teacher share
    the tokenizer; for a student with its own tokenizer, give it the teacher's probabilities as
    ``soft_labels`` and train it with :class:`warmstart.distill.SoftLabelTrainer`.

    Overrides ``compute_loss``, ``validation_step``, ``prepare_loader``, ``on_before_optimizer_step``,
    ``extra_state``/``load_extra_state`` and ``weights_metadata``.

    Args:
        student: the network to train.
        teacher: a trained network, or a list of them (any architectures, same classes).
        optimizer: as for :class:`warmstart.Trainer`.
        temperature: ``T > 0``.
        alpha: weight of the distillation term in [0, 1] (RepDistiller's convention).
        teacher_weights: weights of several teachers (normalised).
        combine: ``"probs"`` (default: distil into the teachers' mean probabilities) or ``"kl"``.
        cache_teacher: cache the teachers' logits (offline distillation).
        cache_path: where to keep the cache (default ``out_dir/teacher_logits.npy``, or a temporary
            folder removed with the trainer when there is no ``out_dir``).
        hints: :class:`FeatureHint` s for feature distillation (online only).
        **kwargs: :class:`warmstart.Trainer` arguments.

    Examples:
        >>> from warmstart.models import mlp
        >>> teacher, student = mlp(16, [32], 3), mlp(16, [4], 3)
        >>> trainer = DistillTrainer(student, teacher, temperature=4.0, alpha=0.9, progress=False)
        >>> history = trainer.fit([(torch.randn(8, 16), torch.randint(0, 3, (8,)))])
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | Sequence[nn.Module], optimizer: Any = None, *,
                 temperature: float = 4.0, alpha: float = 0.9, teacher_weights: Sequence[float] | None = None,
                 combine: str = "probs", cache_teacher: bool = False, cache_path: str | None = None,
                 hints: Sequence[FeatureHint] = (), **kwargs: Any):
        check_kd_options(temperature, alpha)
        if combine not in COMBINE:
            raise ConfigError(f"combine must be 'probs' or 'kl', got '{combine}'")
        teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
        _check_teachers(student, teachers)
        super().__init__(student, optimizer, **kwargs)
        self.teachers = teachers
        for model in self.teachers:
            model.to(self.device).eval().requires_grad_(False)
        self.temperature, self.alpha, self.combine = temperature, alpha, combine
        self.teacher_weights = None if teacher_weights is None else list(teacher_weights)
        if self.teacher_weights is not None and len(self.teacher_weights) != len(self.teachers):
            raise ConfigError(f"teacher_weights has {len(self.teacher_weights)} entries for {len(self.teachers)} teachers")
        self.teacher_ids = [{"class": type(m).__name__, "parameters": sum(p.numel() for p in m.parameters()),
                             "sha256": model_fingerprint(m)} for m in self.teachers]
        if cache_teacher and hints:
            raise ConfigError("feature hints need the teacher's features every step; use cache_teacher=False with hints")
        self.cache_teacher, self.cache_path, self.cache = cache_teacher, cache_path, None
        self._fingerprint = SampleFingerprint(self.device)
        self._prints: list[tuple[torch.Tensor, torch.Tensor]] = []  # (batch, cache) fingerprints since the last read
        self.metrics.fold_before_read(self._fold_prints)
        self._cache_tmp: tempfile.TemporaryDirectory | None = None
        self.hints = list(hints)
        self.taps = FeatureTaps(self.unwrapped_model, self.teachers[0], self.hints) if self.hints else None
        self.adapters = nn.ModuleList()
        self._pending_adapter_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ the loss

    def teacher_logits(self, inputs: Any) -> list[torch.Tensor]:
        """Run every teacher on ``inputs`` (no grad; the caller's autocast applies).

        A teacher whose weights are in another floating dtype than the inputs (a float16 or
        float64 teacher) gets the inputs cast to its dtype; its logits are compared in float32.
        """
        with torch.no_grad():
            return [run_model(model, _as_dtype_of(model, inputs)) for model in self.teachers]

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        if self.cache is not None:  # indexed batches: (x, y, rows) or, unlabelled, (x, rows)
            inputs, target = split_batch(batch[:-1], require_target=False)
            logits, stored = self.cache.lookup(batch[-1], self.device)
            self._check_cached_inputs(inputs, stored)
            teacher = list(logits.unbind(1))
        else:
            inputs, target = split_batch(batch, require_target=False)  # unlabelled (x,): the teacher labels it
            teacher = self.teacher_logits(inputs)
        student_logits = run_model(self.model, inputs)
        for logits in teacher:
            check_logits(student_logits, logits)
        if target is not None:
            target = self.check_targets(student_logits, target)
        terms = kd_terms(student_logits, teacher, target, self.temperature, self.alpha, self.teacher_weights,
                         self.combine)
        if self.taps is not None:
            hint_terms = self.taps.losses(self.adapters)
            terms["loss"] = terms["loss"] + sum(hint_terms.values())
            terms.update(hint_terms)
        return {**terms, "output": student_logits}

    def _check_cached_inputs(self, inputs: torch.Tensor, stored: torch.Tensor) -> None:
        """Keep the batch's fingerprint beside the one taken when the cache was built; compared at the next read."""
        self._prints.append((self._fingerprint.projection(inputs), stored))
        if len(self._prints) >= self.checks.fold_every:
            self._fold_prints()

    def _fold_prints(self) -> None:
        """Compare the fingerprints kept since the last read with the cache's, as one device-side check."""
        if not self._prints:
            return
        now, stored = (torch.cat(parts) for parts in zip(*self._prints))
        self._prints = []
        self.checks.update("teacher_cache_mismatch", self._fingerprint.mismatch(now, stored), error=self._stale)

    def _stale(self, excess: float) -> DataError | None:
        return None if excess <= 0 else DataError(
            f"the teacher cache '{self.cache.path}' is stale: a training sample differs from the one the teacher saw "
            "when the cache was built (the data changed, rows moved, or the data set returns different data on each "
            "access). Delete the cache files to rebuild them; for random augmentation wrap the data set in "
            "warmstart.distill.AugmentedViews, which caches a fixed set of views.")

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """The student alone: cross-entropy as ``loss``, and accuracy."""
        return hard_label_sums(self, batch)

    def on_before_optimizer_step(self) -> None:
        if len(self.adapters) and distributed.is_distributed():  # adapters live outside the DDP-wrapped student
            for param in self.adapters.parameters():
                if param.grad is not None:
                    distributed.all_reduce_sum(param.grad).div_(distributed.world_size())

    # ------------------------------------------------------------------ set-up: adapters and the logit cache

    def prepare_loader(self, loader: Iterable[Any] | None, stage: str) -> Iterable[Any] | None:
        if loader is None or stage != "train":
            return loader
        if self.hints and not len(self.adapters):
            self._build_adapters(loader)
        if self.cache_teacher:
            loader = self._indexed(loader)
            self.cache = self._open_or_build_cache(loader)
        return loader

    @torch.no_grad()
    def _build_adapters(self, loader: Iterable[Any]) -> None:
        """One forward pass of student and teacher on a batch gives the feature shapes the adapters map between."""
        inputs, _ = split_batch(move_to_device(next(iter(loader)), self.device))
        was_training = self.unwrapped_model.training
        self.unwrapped_model.eval()
        with self.autocast():
            run_model(self.unwrapped_model, inputs)
            run_model(self.teachers[0], inputs)
        self.unwrapped_model.train(was_training)
        for i, hint in enumerate(self.hints):
            try:
                adapter = make_adapter(self.taps.student_out[i].shape, self.taps.teacher_out[i].shape)
            except ValueError as err:
                raise ConfigError(f"hint {hint.student!r} -> {hint.teacher!r}: {err}") from None
            self.adapters.append(adapter.to(self.device))
        for param in self.adapters.parameters():  # rank 0's draw on every rank (they live outside DDP and FSDP)
            distributed.broadcast_from_main(param.detach())
        if self._pending_adapter_state is not None:
            self.adapters.load_state_dict(self._pending_adapter_state)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.add_param_group({"params": list(self.adapters.parameters()), "lr": lr, "name": "hint_adapters"})

    def _indexed(self, loader: Iterable[Any]) -> Iterable[Any]:
        """The same loader, yielding the sample indices last; refuse random augmentation (stale logits).

        An :class:`InMemoryLoader` transform is cached when it is deterministic (a normalisation):
        :func:`warmstart.data.is_random` probes it on the first batch's inputs.
        """
        stale = ("cached teacher logits would be stale: the training data is randomly augmented ({what}), so the "
                 "student would see inputs the teacher never did. Wrap the data set in "
                 "warmstart.distill.AugmentedViews(dataset, transform, views=4) to cache 4 views per sample, or "
                 "use cache_teacher=False.")
        if isinstance(loader, InMemoryLoader):
            if is_random(loader.transform):
                raise DataError(stale.format(what=f"InMemoryLoader(transform={type(loader.transform).__name__})"))
            if is_random(loader.transform, probe=loader.inputs[:loader.batch_size]):
                raise DataError(stale.format(what="InMemoryLoader(transform=...) gives other outputs for the same "
                                                  "inputs, at another call or in another batch"))
            return loader.clone(with_index=True)
        if isinstance(loader, DataLoader):
            dataset = loader.dataset
            if isinstance(dataset, (AugmentedViews, WithIndex)):
                return loader
            transform = _find_transform(dataset)
            if is_random(transform):
                raise DataError(stale.format(what=type(transform).__name__))
            return rebuild_loader(loader, dataset=WithIndex(dataset))
        return loader  # any other iterable must already yield the indices last

    def _open_or_build_cache(self, loader: Iterable[Any]) -> TeacherCache:
        """Rank 0 builds the cache if it is missing; then every rank opens it (no rank reads a half-written cache)."""
        dataset, views, length, rows_of = _cache_source(loader)
        probes = [_sample(dataset, i) for i in probe_indices(length)]
        outputs = self._probe_outputs(torch.stack([torch.as_tensor(x) for x, _ in probes]))
        num_classes = int(outputs.shape[-1])
        # the teachers' outputs on the probes catch a teacher changed outside its tensors (the hash cannot)
        expect = {"length": length, "views": views, "num_classes": num_classes,
                  "dataset": dataset_fingerprint(probes, length), "teacher": [t["sha256"] for t in self.teacher_ids],
                  "teacher_outputs": outputs.tolist()}
        path = self._cache_file()
        error: BaseException | None = None
        if distributed.is_main_process() and not path.exists():
            try:
                TeacherCache.build(path, rows_of(), self._stacked_logits, length=length, views=views,
                                   num_classes=num_classes, meta=expect, teachers=len(self.teachers), device=self.device)
            except Exception as err:  # noqa: BLE001  (re-raised below, after the other ranks know)
                error = err
        if distributed.any_rank(error is not None, self.device):  # also the barrier the other ranks wait in
            raise error or DataError("rank 0 could not build the teacher cache; see its error")
        return TeacherCache.open(path, expect)

    def _stacked_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return torch.stack(self.teacher_logits(move_to_device(inputs, self.device)), dim=1)

    def _cache_file(self) -> Path:
        """``cache_path``, else ``out_dir/teacher_logits.npy``, else a temporary folder removed with the trainer."""
        if self.cache_path:
            path = Path(self.cache_path)
            if path.is_dir():
                raise ConfigError(f"cache_path '{path}' is a directory; give the cache's file path, e.g. "
                                  f"{path / 'teacher_logits.npy'}")
            return path
        if self.out_dir is not None:
            return self.out_dir / "teacher_logits.npy"
        if distributed.is_distributed():
            raise ConfigError("cache_teacher under torchrun needs a folder every rank shares: set out_dir or cache_path")
        if self._cache_tmp is None:
            self._cache_tmp = tempfile.TemporaryDirectory(prefix="warmstart-cache-")
        return Path(self._cache_tmp.name) / "teacher_logits.npy"

    def _probe_outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(P, teachers, C)`` float64 CPU: every teacher's logits on the probe samples, in full precision."""
        logits = self.teacher_logits(move_to_device(inputs, self.device))
        return torch.stack([t.detach().double().cpu() for t in logits], dim=1)

    # ------------------------------------------------------------------ checkpoints

    def extra_state(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict(), "teachers": self.teacher_ids}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state["adapters"]:
            if len(self.adapters):
                self.adapters.load_state_dict(state["adapters"])
            else:
                self._pending_adapter_state = state["adapters"]

    def weights_metadata(self) -> dict[str, Any]:
        return {**super().weights_metadata(), "teachers": self.teacher_ids,
                "distillation": {"temperature": self.temperature, "alpha": self.alpha, "combine": self.combine}}


def _check_teachers(student: nn.Module, teachers: list[Any]) -> None:
    if not teachers:
        raise ConfigError("teacher is an empty list: pass a trained model, or a list of them")
    for teacher in teachers:
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"a teacher must be an nn.Module, got {type(teacher).__name__}")
        if teacher is student:
            raise ConfigError("the student is also given as the teacher: distillation needs a separate, trained "
                              "teacher (copy.deepcopy(model) to distil a model into a copy of itself)")


def _as_dtype_of(model: nn.Module, inputs: Any) -> Any:
    """Floating inputs cast to the dtype of ``model``'s first floating parameter (as they are if it matches)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and dtype is not None and inputs.dtype != dtype:
        return inputs.to(dtype)
    return inputs


def _find_transform(dataset: Dataset) -> Any:
    """The ``transform`` of a data set or of the data set it wraps (Subset, WithIndex, ...)."""
    while dataset is not None:
        transform = getattr(dataset, "transform", None)
        if transform is not None:
            return transform
        dataset = getattr(dataset, "dataset", None)
    return None


def _sample(dataset: Any, index: int) -> tuple[torch.Tensor, Any]:
    if isinstance(dataset, InMemoryLoader):  # the sample as training sees it: through its (deterministic) transform
        x = dataset.inputs[index:index + 1]
        x = x if dataset.transform is None else dataset.transform(x)
        return x[0].cpu(), None if dataset.targets is None else dataset.targets[index].cpu()
    sample = dataset.view(index, 0) if isinstance(dataset, AugmentedViews) else dataset[index]
    if not isinstance(sample, (tuple, list)):
        return torch.as_tensor(sample), None
    return torch.as_tensor(sample[0]), sample[1] if len(sample) > 1 else None


def _cache_source(loader: Iterable[Any]) -> tuple[Any, int, int, Any]:
    """What the cache covers: ``(data set, views, length, function yielding (inputs, rows) batches)``."""
    if isinstance(loader, InMemoryLoader):
        size = loader.batch_size

        def in_memory():
            for start in range(0, loader.dataset_size, size):
                rows = torch.arange(start, min(start + size, loader.dataset_size))
                inputs = loader.inputs[rows.to(loader.inputs.device)]
                yield (inputs if loader.transform is None else loader.transform(inputs)), rows
        return loader, 1, loader.dataset_size, in_memory
    if isinstance(loader, DataLoader):
        dataset = loader.dataset
        views = dataset.views if isinstance(dataset, AugmentedViews) else 1
        base = dataset.dataset if isinstance(dataset, WithIndex) else dataset

        def from_dataset():
            every = _EveryView(dataset) if isinstance(dataset, AugmentedViews) else WithIndex(base)
            for batch in DataLoader(every, batch_size=loader.batch_size or 256, collate_fn=loader.collate_fn,
                                    num_workers=loader.num_workers):
                yield batch[0], torch.as_tensor(batch[-1])
        return dataset if isinstance(dataset, AugmentedViews) else base, views, len(base), from_dataset
    raise DataError("cache_teacher needs a DataLoader or an InMemoryLoader, so the teacher can see every sample once")


class _EveryView(Dataset):
    """Every (sample, view) of an :class:`AugmentedViews`, as ``(x_view, y, row)`` with ``row = index * views + view``."""

    def __init__(self, views: AugmentedViews):
        self.views = views

    def __len__(self) -> int:
        return len(self.views) * self.views.views

    def __getitem__(self, row: int) -> tuple[Any, ...]:
        x, y = self.views.view(row // self.views.views, row % self.views.views)
        return (x, row) if y is None else (x, y, row)
