"""FinetuneTrainer: the Trainer with a fine-tuning method (LoRA too), discriminative learning rates and cached features."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from warmstart import distributed
from warmstart._batches import is_text_batch, run_model
from warmstart._runtime import move_to_device, plain_values
from warmstart.config import STRATEGIES, OptimizerConfig
from warmstart.optim import param_groups_weight_decay
from warmstart.data.augment import is_random, without_augmentation
from warmstart.data.loaders import InMemoryLoader, dataset_without_augmentation, rebuild_loader
from warmstart.distributed import ShardSampler
from warmstart.errors import CheckpointError, ConfigError, DataError, nearest
from warmstart.finetune.freezing import (LayerGroup, freeze_batchnorm, frozen_state, is_frozen_batchnorm, layer_groups,
                                         restore_frozen_state, unfreeze_batchnorm)
from warmstart.finetune.lora import (LoraInfo, adapter_parameter_names, adapter_state_dict, add_lora,
                                     check_same_base, lora_info, lora_metadata)
from warmstart.finetune.methods import METHODS, LinearProbe, LoRA, Method, Partial, build_method
from warmstart.heads import find_head, head_parameter_names
from warmstart.proximal import Anchor, ProximalTerm, check_lam
from warmstart.trainer import Trainer, split_batch

_BATCHNORM = nn.modules.batchnorm._BatchNorm


class FeatureBatches:
    """Batches of cached backbone features, ``{"features": f, "target": y}``, shuffled like an in-memory loader."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        self.loader = InMemoryLoader(features, targets, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                     device=features.device)

    def shard(self, rank: int, world_size: int, pad: bool = True) -> FeatureBatches:
        """This rank's share of every epoch, as :meth:`InMemoryLoader.shard` takes it."""
        share = copy.copy(self)
        share.loader = self.loader.shard(rank, world_size, pad)
        return share

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for features, target in self.loader:
            yield {"features": features, "target": target}


class FinetuneTrainer(Trainer):
    """Fine-tune a pretrained model with a fine-tuning method.

    The backbone (everything but the head) is split into layer groups (see
    :func:`warmstart.finetune.layer_groups`). The method decides which groups train in each
    epoch (``"linear_probe"``, ``"partial"``, ``"full"``, ``"gradual"``, ``"lora"``, or a
    :class:`Method` with options) and their learning rates relative to the head's ``lr``.
    Frozen groups have ``requires_grad=False``, are left out of the optimizer (no momentum, no
    weight decay drift) and keep their BatchNorm layers in eval mode unless ``train_bn=True``.
    Gradual unfreezing adds optimizer groups as groups thaw, and the by-name schedules follow.

    With ``"linear_probe"`` (and ``cache_features``), the frozen backbone runs once over each
    loader, without augmentation, and the head trains on the cached features (under ``torchrun``
    every rank caches the whole data set and trains on its share of the batches; ``strategy="fsdp"``
    is refused, as the sharded head cannot run alone).

    With ``"lora"`` (options in ``lora={"r": 8, "alpha": 16, "targets": "auto", "dropout": 0.05}``)
    peft's LoRA adapters are injected into the model in place (:func:`warmstart.finetune.add_lora`):
    the backbone stays frozen, the adapters train at ``lr * backbone_lr_mult`` and the head in full
    at ``lr``. A model that has adapters already (e.g. from :func:`load_adapter`) trains those, as
    a peft ``PeftModel`` trains the adapters it holds; LoRA options that differ from theirs
    (``lora={"r": 2}`` on r=8 adapters) are refused, since they could not be honoured: merge the
    adapters (:func:`merge_lora`) to train new ones. ``fit`` refuses a model whose adapters were
    merged or replaced after the trainer was built (it would train the head alone).
    ``last.safetensors`` (and :meth:`save_weights`) then hold only the adapters and the head, with
    the base model's identity (:func:`warmstart.finetune.load_adapter` refuses another base);
    ``last.pt`` holds the full training state, so ``fit(resume="last")`` is exact as for any run;
    resuming with another ``alpha`` is refused (it rescales the trained update, so the resumed
    model would compute something else), another ``dropout`` is applied and listed in the
    ``ResumeChangeWarning`` with the method's other settings (see :meth:`resolved_config`).
    :func:`warmstart.finetune.merge_lora` folds the adapters in for deployment.

    ``proximal=lam`` adds the proximal term toward the pretrained weights (the model as training
    starts, head excluded), as in :class:`warmstart.pretrain.ProximalTrainer`: the data loss is
    multiplied by ``lam`` and ``w - w0`` is added to the gradients (or the prox step is applied).
    With LoRA the anchored weights are the adapters (``B`` starts at zero), so the term keeps the
    update ``(alpha / r) B A`` small.

    Overrides ``compute_loss`` (features or inputs; texts longer than the model's positions are
    refused), ``check_targets`` (float or ``(B, 1)`` labels for class scores are refused),
    ``prepare_loader`` (the feature cache), ``configure_param_groups``, ``backward``,
    ``on_before/after_optimizer_step``, ``on_train_epoch_start``, ``extra_state``/``load_extra_state``,
    ``resolved_config`` (with the method), ``weights_metadata`` and ``save_weights`` (adapters and
    head alone under LoRA); ``fit`` first checks that the LoRA adapters are still on the model.

    Args:
        model: the pretrained model, its head already swapped for the task (:func:`swap_head`).
        optimizer: an :class:`OptimizerConfig`/dict (the trainer builds the groups; ``lr`` is
            the head's) or an optimizer instance (its groups are used as they are).
        loss_fn: as for :class:`warmstart.Trainer`.
        method: a method name, a dict ``{"name": ..., **options}`` or a :class:`Method`
            (``None``: ``"full"``).
        lora: the options of ``method="lora"``: ``r``, ``alpha``, ``targets``, ``dropout``.
        head: module path of the head (found automatically when omitted).
        groups: explicit layer groups, each a pattern or list of patterns over module names.
        train_bn: keep BatchNorm layers training inside frozen groups.
        freeze_bn: hold every BatchNorm layer of the backbone in eval mode, also in the groups that
            train: it normalises with its pretrained running statistics and never updates them,
            while its affine weights train with their group (timm's ``freeze_bn``). Few labels in
            small batches give noisy batch statistics that pull a pretrained network off its
            features; the statistics it was trained with do not move.
        proximal: ``lam`` of the proximal term (``None``: off).
        proximal_mode: ``"penalty"`` or ``"prox"``.
        beta: ``beta/2 ||w||^2`` on the head (it has no anchor), with ``proximal``.
        **kwargs: :class:`warmstart.Trainer` arguments, ``strategy`` (the parallelism: ``"auto"``,
            ``"ddp"``, ``"fsdp"``) included. A ``strategy`` that names a fine-tuning method (the
            spelling before ``method``) is taken as ``method``, with a ``DeprecationWarning``.

    Examples:
        >>> from warmstart.models import small_cnn
        >>> model = small_cnn(width=4)
        >>> trainer = FinetuneTrainer(model, {"name": "adam", "lr": 1e-3}, method="gradual", progress=False)
        >>> [g["name"] for g in trainer.optimizer.param_groups]
        ['head', 'head']
    """

    def __init__(self, model: nn.Module, optimizer: Any = None, loss_fn: Any = None, *,
                 method: str | Method | dict[str, Any] | None = None, lora: Mapping[str, Any] | None = None,
                 head: str | None = None, groups: Sequence[str | Sequence[str]] | None = None, train_bn: bool = False,
                 freeze_bn: bool = False, proximal: float | None = None, proximal_mode: str = "penalty",
                 beta: float = 0.0, **kwargs: Any):
        method = _method_from_options(self, method, kwargs)
        self.method = build_method(method, None if lora is None else dict(lora))
        _check_parallelism(self.method, kwargs)
        self.head_info = find_head(model, head)
        self.head_names = head_parameter_names(model, head)
        self.lora = self._attach_lora(model, head, _requested_lora_options(method, lora, self.method))
        self._adapters = set() if self.lora is None else set(adapter_parameter_names(model))
        if train_bn and freeze_bn:
            raise ConfigError("train_bn=True trains BatchNorm layers inside frozen groups and freeze_bn=True holds "
                              "every BatchNorm layer in eval mode: pass one of them")
        self.train_bn, self.freeze_bn = train_bn, freeze_bn
        self._bn_params = {id(p) for m in model.modules() if isinstance(m, _BATCHNORM) for p in m.parameters(recurse=False)}
        self.backbone = _backbone_groups(model, groups, set(self.head_names))
        if proximal is not None:
            check_lam(proximal)
        self._proximal_settings = None if proximal is None else (float(proximal), proximal_mode, beta)
        self.proximal: ProximalTerm | None = None
        self.num_trainable = self.method.trainable(0, len(self.backbone))
        self._apply_trainable(model, self.num_trainable)
        if isinstance(self.method, Partial) and self.method.reinit_rest:
            _reinitialise([g for g in self.backbone[len(self.backbone) - self.num_trainable:]])
        super().__init__(model, optimizer, loss_fn, **kwargs)
        self._custom_optimizer = isinstance(optimizer, torch.optim.Optimizer)
        self._head_forward: nn.Module = self.head_info.module
        self._max_tokens = _position_limit(model)  # a Hugging Face encoder's positions; None: no limit known

    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *,
            resume: str | os.PathLike | None = None) -> list[dict[str, float]]:
        """:meth:`warmstart.Trainer.fit`, once the LoRA adapters this trainer was built for are checked to be on the model.

        Raises:
            ConfigError: under LoRA, the model's adapters were merged (:func:`merge_lora`) or
                replaced since the trainer was built: it would train the head alone.
        """
        if self.lora is not None and lora_info(self.unwrapped_model) is not self.lora:
            now = lora_info(self.unwrapped_model)
            what = ("were merged into its weights (merge_lora) or removed" if now is None else
                    f"were replaced by others (r={now.r}) that this trainer's optimizer does not hold")
            raise ConfigError(f"this FinetuneTrainer was built to train the LoRA adapters of {type(self.unwrapped_model).__name__} "
                              f"(r={self.lora.r} on {len(self.lora.targets)} layers), which {what} since: fit would train "
                              "the head alone. Build a new FinetuneTrainer(model, method='lora') to train new adapters, "
                              "or method='full' to train every weight of the merged model.")
        return super().fit(train_loader, val_loader, resume=resume)

    def resolved_config(self) -> dict[str, Any]:
        """The Trainer's resolved config and ``method``: the fine-tuning method's name and options.

        Under LoRA the options are those of the adapters the model trains (``r``, ``alpha``,
        ``dropout``, ``targets``), so a resume with other settings lists them in its warning.
        """
        method = {"name": self.method.name, **plain_values(dataclasses.asdict(self.method))}
        if self.lora is not None:
            method.update(r=self.lora.r, alpha=self.lora.alpha, dropout=self.lora.dropout, targets=list(self.lora.targets))
        return {**super().resolved_config(), "method": method, "freeze_bn": self.freeze_bn}

    # ------------------------------------------------------------------ groups and freezing

    def _attach_lora(self, model: nn.Module, head: str | None, requested: dict[str, Any]) -> LoraInfo | None:
        """LoRA adapters for the LoRA method: the model's own if it has them (and ``requested`` agrees), else new ones."""
        if not isinstance(self.method, LoRA):
            return None
        existing = lora_info(model)
        if existing is not None:
            _check_same_adapters(model, existing, requested)
            return existing
        s = self.method
        return add_lora(model, r=s.r, alpha=s.alpha, targets=s.targets, dropout=s.dropout, head=head)

    def _apply_trainable(self, model: nn.Module, n: int) -> None:
        """Train the top ``n`` backbone groups and the head; freeze the rest (BatchNorm included)."""
        cut = len(self.backbone) - n
        for index, group in enumerate(self.backbone):
            frozen = index < cut
            held = frozen or self.freeze_bn  # freeze_bn: eval-mode BatchNorm also where the group trains
            for module in group.modules:
                for sub in module.modules():
                    if isinstance(sub, _BATCHNORM) and not self.train_bn:
                        if held and not is_frozen_batchnorm(sub):
                            freeze_batchnorm(sub)
                        elif not held and is_frozen_batchnorm(sub):
                            unfreeze_batchnorm(sub, training=model.training)
            for param in group.parameters():
                param.requires_grad_(not frozen or (self.train_bn and id(param) in self._bn_params))
        names = set(self.head_names) | self._adapters
        for name, param in model.named_parameters():
            if name in names:
                param.requires_grad_(True)

    def configure_param_groups(self, config: OptimizerConfig) -> list[dict[str, Any]]:
        """The head at ``lr``, then each trainable backbone group from the top at its multiplier.

        With ``proximal``, the anchored (backbone) weights get no weight decay: it would pull them
        toward zero against the pull toward ``w0``.
        """
        head = [(n, p) for n, p in self.unwrapped_model.named_parameters() if n in set(self.head_names)]
        groups = param_groups_weight_decay(head, config.weight_decay, lr=config.lr, name="head")
        if self.lora is not None:
            adapters = [(n, p) for n, p in self.unwrapped_model.named_parameters() if n in self._adapters]
            anchored = self._adapters if self._proximal_settings is not None else set()
            groups += param_groups_weight_decay(adapters, config.weight_decay, no_decay=anchored, name="lora",
                                                lr=config.lr * self.method.backbone_lr_mult)
        for index in reversed(range(len(self.backbone) - self.num_trainable, len(self.backbone))):
            groups += self._group_for(index, config.lr, config.weight_decay)
        return groups

    def _group_for(self, index: int, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        group = self.backbone[index]
        ids = {id(p) for p in group.parameters()}
        named = [(n, p) for n, p in self.unwrapped_model.named_parameters() if id(p) in ids]
        anchored = set() if self._proximal_settings is None else {n for n, _ in named}
        return param_groups_weight_decay(named, weight_decay, no_decay=anchored, name=group.name,
                                         lr=lr * self.method.lr_mult(index, len(self.backbone)))

    def on_train_epoch_start(self, epoch: int) -> None:
        wanted = self.method.trainable(epoch, len(self.backbone))
        if wanted > self.num_trainable:
            self._thaw(wanted)
        if self._proximal_settings is not None:
            if self.proximal is None:  # w0: the pretrained weights (or new adapters) as training starts; not the head
                self.proximal = ProximalTerm(self.unwrapped_model, self._anchor(), *self._proximal_settings)
            self.proximal.refresh(self.optimizer)

    def _anchor(self) -> Anchor:
        if self.lora is not None:  # the base is frozen: only the adapters move
            return Anchor({n: p for n, p in self.unwrapped_model.named_parameters() if n in self._adapters}).to(self.device)
        return Anchor.from_model(self.unwrapped_model, exclude=self.head_names).to(self.device)

    def _thaw(self, wanted: int) -> None:
        """Unfreeze backbone groups up to ``wanted`` from the top and give each an optimizer group."""
        before = self.num_trainable
        self.num_trainable = wanted
        self._apply_trainable(self.unwrapped_model, wanted)
        base_lr, weight_decay = self._base_lr_and_decay()
        for index in reversed(range(len(self.backbone) - wanted, len(self.backbone) - before)):
            for group in self._group_for(index, base_lr, weight_decay):
                self._add_param_group(group)
        self.refresh_trainable()

    def _base_lr_and_decay(self) -> tuple[float, float]:
        head_group = self.optimizer.param_groups[0]
        lr = head_group.get("initial_lr", head_group["lr"]) if not self._custom_optimizer else self.optimizer.defaults["lr"]
        return float(lr), float(self.optimizer.defaults.get("weight_decay", 0.0))

    def _add_param_group(self, group: dict[str, Any]) -> None:
        """Add an optimizer group and extend the LR schedule to it, at the schedule's current factor."""
        group["initial_lr"] = group["lr"]
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.base_lrs.append(group["initial_lr"])
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
            group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[0](scheduler.last_epoch)
        elif isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            first = self.optimizer.param_groups[0]
            group["lr"] = group["initial_lr"] * first["lr"] / first.get("initial_lr", first["lr"])
            scheduler.min_lrs.append(scheduler.min_lrs[0])
        elif scheduler is not None:
            raise ConfigError(f"gradual unfreezing adds optimizer groups during training, which {type(scheduler).__name__} "
                              "cannot follow; use a schedule by name (cosine, step, constant, plateau) or a LambdaLR")
        self.optimizer.add_param_group(group)

    # ------------------------------------------------------------------ the proximal term

    def backward(self, loss: torch.Tensor) -> bool:
        return super().backward(loss if self.proximal is None else loss * self.proximal.lam)

    def on_before_optimizer_step(self) -> None:
        if self.proximal is not None:
            self.proximal.before_step()

    def on_after_optimizer_step(self) -> None:
        if self.proximal is not None:
            self.proximal.after_step(self.optimizer)

    # ------------------------------------------------------------------ the linear-probe feature cache

    def compute_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        if isinstance(batch, dict) and "features" in batch:  # cached backbone features: only the head runs
            output = self._head_forward(batch["features"])
            return {"loss": self.loss_fn(output, self.check_targets(output, batch["target"])), "output": output}
        if self._max_tokens is not None and is_text_batch(batch):
            _check_text_length(batch["input_ids"], self._max_tokens, type(self.unwrapped_model).__name__)
        return super().compute_loss(batch)

    def check_targets(self, output: Any, target: Any) -> Any:
        """The Trainer's label checks, after refusing labels that cannot be class indices of ``(B, C)`` scores.

        Raises:
            DataError: ``(B, 1)`` labels, or float ``(B,)`` labels, for a classifier's ``(B, C)`` outputs.
        """
        _check_class_targets(output, target)
        return super().check_targets(output, target)

    def prepare_loader(self, loader: Iterable[Any] | None, stage: str) -> Iterable[Any] | None:
        """The linear probe's cached features in place of ``loader``.

        A loader that the Trainer shards under ``torchrun`` (a ``DataLoader``, an :class:`InMemoryLoader`)
        has the features of the whole data set cached on every rank, and each rank takes its share of
        the feature batches as the loader took it: the global batches are then those of one process.
        """
        if loader is None or not (isinstance(self.method, LinearProbe) and self.method.cache_features):
            return loader
        whole = isinstance(loader, (DataLoader, InMemoryLoader))
        cached = self._cache_features(_all_samples(loader) if whole else loader)
        if cached is None:
            return loader
        features, targets, batch_size = cached
        if distributed.is_distributed() and stage == "train" and not isinstance(self._head_forward, nn.parallel.DistributedDataParallel):
            self._head_forward = nn.parallel.DistributedDataParallel(self.head_info.module)
        batches = FeatureBatches(features, targets, batch_size, shuffle=stage == "train" and _shuffles(loader),
                                 seed=self.seed)
        return distributed.shard_loader(batches, self.seed, train=stage == "train") if whole else batches

    @torch.no_grad()
    def _cache_features(self, loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """Run the frozen model once, capturing the head's inputs; ``None`` if the head is not the last step."""
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        hook = self.head_info.module.register_forward_hook(lambda m, args, out: captured.append((args[0], out)))
        was_training = self.unwrapped_model.training
        self.unwrapped_model.eval()
        features, targets, batch_size = [], [], None
        try:
            for batch in _without_augmentation(loader):
                inputs, target = split_batch(move_to_device(batch, self.device, self.config.channels_last))
                with self.autocast():
                    output = run_model(self.unwrapped_model, inputs)
                head_input, head_output = captured.pop()
                if not features and output is not head_output:
                    warnings.warn(f"the head '{self.head_info.name}' is not the model's last step, so its features "
                                  "cannot be cached; the linear probe runs the frozen backbone every step", stacklevel=4)
                    return None
                features.append(head_input.float())
                targets.append(target)
                batch_size = batch_size or len(target)
        finally:
            hook.remove()
            self.unwrapped_model.train(was_training)
        return torch.cat(features), torch.cat(targets), batch_size

    # ------------------------------------------------------------------ checkpoints

    def weights_metadata(self) -> dict[str, Any]:
        """The Trainer's metadata; under LoRA also the head found at the start, the adapters' settings and the base."""
        if self.lora is None:
            return super().weights_metadata()
        head = {"head": self.head_info.name, "num_classes": self.head_info.num_classes}
        return {**super().weights_metadata(), **head, **lora_metadata(self.unwrapped_model)}

    def save_weights(self, path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
        """Write the weights as ``.safetensors``; under LoRA only the adapters and the head (kilobytes to megabytes)."""
        if self.lora is not None:
            state_dict = adapter_state_dict(self.unwrapped_model, None if state_dict is None else dict(state_dict))
        return super().save_weights(path, state_dict, extra)

    def checkpoint_model_state(self) -> dict[str, torch.Tensor]:
        """Under LoRA only what training changes: adapters, head and buffers (the base is frozen and hashed)."""
        if self.lora is None:
            return super().checkpoint_model_state()
        state = self.unwrapped_model.state_dict()
        keep = set(adapter_state_dict(self.unwrapped_model, state))
        parameters = {name for name, _ in self.unwrapped_model.named_parameters()}
        return {name: tensor for name, tensor in state.items() if name in keep or name not in parameters}

    def load_checkpoint_model_state(self, state: dict[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
        """Under LoRA, check that this model's base is the checkpoint's (sha256) before loading onto it."""
        if self.lora is None:
            return super().load_checkpoint_model_state(state, metadata)
        saved = metadata.get("lora", {}).get("base")
        if saved is None:
            raise CheckpointError("this checkpoint of a LoRA run does not record its base model; resume it with the "
                                  "warmstart version that wrote it, or start a new run")
        check_same_base(saved, self.lora.base, "the LoRA run this checkpoint continues")
        _check_same_scaling(metadata["lora"], self.lora)
        self.unwrapped_model.load_state_dict(state, strict=False)  # the frozen base stays as it was loaded

    def extra_state(self) -> dict[str, Any]:
        return {"frozen": frozen_state(self.unwrapped_model), "num_trainable": self.num_trainable,
                "anchor": None if self.proximal is None else self.proximal.anchor.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state["num_trainable"] > self.num_trainable:
            self._thaw(state["num_trainable"])  # the optimizer groups of the saved stage, in the same order
        restore_frozen_state(self.unwrapped_model, state["frozen"])
        if state.get("anchor") is not None and self._proximal_settings is not None:
            anchor = Anchor(state["anchor"]).to(self.device)
            self.proximal = ProximalTerm(self.unwrapped_model, anchor, *self._proximal_settings)


def _method_from_options(trainer: FinetuneTrainer, method: str | Method | dict[str, Any] | None,
                         options: dict[str, Any]) -> Any:
    """The fine-tuning method, also from ``strategy=`` (its deprecated spelling) in the Trainer ``options``.

    A ``strategy`` that names a parallelism (``"auto"``, ``"ddp"``, ``"fsdp"``) stays in ``options``
    for the Trainer; one that names a fine-tuning method (a name, a dict or a :class:`Method`) is
    taken out and used as the method, with a ``DeprecationWarning`` pointing at the caller.
    """
    strategy = options.get("strategy")
    names_method = isinstance(strategy, (dict, Method)) or (isinstance(strategy, str) and strategy in METHODS)
    if isinstance(strategy, str) and not names_method and strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}{nearest(strategy, [*STRATEGIES, *METHODS])}: strategy is the "
                          f"parallelism ({', '.join(STRATEGIES)}) and method the fine-tuning method "
                          f"({', '.join(METHODS)})")
    if not names_method:  # no strategy, or a parallelism for the Trainer (which checks it)
        return "full" if method is None else method
    if method is not None:
        raise ConfigError(f"method={method!r} and strategy={strategy!r} both name the fine-tuning method; pass it once, "
                          "as method= (strategy= is the parallelism: 'auto', 'ddp' or 'fsdp')")
    warnings.warn(f"FinetuneTrainer(strategy={strategy!r}) is deprecated for the fine-tuning method: use "
                  f"method={strategy!r} (strategy= is the Trainer's parallelism: 'auto', 'ddp' or 'fsdp')",
                  DeprecationWarning, stacklevel=_caller_stacklevel(trainer))
    return options.pop("strategy")


def _check_parallelism(method: Method, options: dict[str, Any]) -> None:
    """Refuse the linear probe's feature cache under FSDP, before the Trainer shards the model.

    Raises:
        ConfigError: ``method="linear_probe"`` (caching features) with ``strategy="fsdp"``.
    """
    config = options.get("config")
    strategy = options.get("strategy", getattr(config, "strategy", "auto"))
    if isinstance(method, LinearProbe) and method.cache_features and strategy == "fsdp":
        raise ConfigError("method='linear_probe' trains the head alone on cached backbone features, which "
                          "strategy='fsdp' cannot run: FSDP shards the head with the model and gathers it only in the "
                          "whole model's forward. Use strategy='ddp' (a linear probe trains too little to need "
                          "sharding), or method=LinearProbe(cache_features=False) to run the frozen backbone every "
                          "step under FSDP.")


def _caller_stacklevel(trainer: FinetuneTrainer) -> int:
    """``warnings.warn``'s stacklevel, from :func:`_method_from_options`, of the code that builds ``trainer``.

    Level 2 is ``FinetuneTrainer.__init__``; the ``__init__`` of subclasses calling it are passed over too.
    """
    level, frame = 3, sys._getframe(3)
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is trainer:
        level, frame = level + 1, frame.f_back
    return level


_ADAPTER_OPTIONS = ("r", "alpha", "dropout", "targets")


def _requested_lora_options(spec: Any, lora: Mapping[str, Any] | None, method: Method) -> dict[str, Any]:
    """The adapter options the caller asked for: given in ``lora``/the method dict, or differing from LoRA's defaults."""
    if not isinstance(method, LoRA):
        return {}
    given = set(lora or {}) | (set(spec) if isinstance(spec, dict) else set())
    defaults = LoRA()
    given |= {key for key in _ADAPTER_OPTIONS if getattr(method, key) != getattr(defaults, key)}
    return {key: getattr(method, key) for key in _ADAPTER_OPTIONS if key in given}


def _check_same_adapters(model: nn.Module, existing: LoraInfo, requested: dict[str, Any]) -> None:
    """Refuse LoRA options that differ from those of the adapters the model already has (they would be ignored).

    Raises:
        ConfigError: naming each requested option beside the adapters' own.
    """
    differing = [f"{key}={requested[key]!r} (its adapters have {getattr(existing, key)!r})"
                 for key in ("r", "alpha", "dropout") if key in requested and requested[key] != getattr(existing, key)]
    targets = requested.get("targets", "auto")
    if targets != "auto" and not _same_targets(existing.targets, [targets] if isinstance(targets, str) else targets):
        differing.append(f"targets={targets!r} (its adapters are on {existing.targets[:4]}"
                         f"{' ...' if len(existing.targets) > 4 else ''})")
    if differing:
        raise ConfigError(f"{type(model).__name__} already has LoRA adapters (r={existing.r}, alpha={existing.alpha}, "
                          f"dropout={existing.dropout}, on {len(existing.targets)} layers), but this trainer asks for "
                          f"{', '.join(differing)}: those adapters would train, not the ones asked for. Train them as "
                          "they are (method='lora' without lora options), or merge_lora(model) first (or start from "
                          "the model without adapters) to train new ones with these options.")


def _same_targets(existing: list[str], requested: Sequence[str]) -> bool:
    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    return (all(any(matches(name, t) for t in requested) for name in existing)
            and all(any(matches(name, t) for name in existing) for t in requested))


def _check_same_scaling(saved: Mapping[str, Any], current: LoraInfo) -> None:
    """Refuse to resume LoRA adapters under another ``alpha``: it rescales the trained update ``(alpha / r) B A``.

    Raises:
        CheckpointError: naming both values and what to do.
    """
    old = saved.get("alpha")
    if old is not None and float(old) != current.alpha:
        raise CheckpointError(
            f"the LoRA run this checkpoint continues trained its adapters with alpha={float(old)} (update scaled by "
            f"alpha / r = {float(old) / current.r:g}); this trainer has alpha={current.alpha} (scale "
            f"{current.alpha / current.r:g}), which would rescale the trained update and change what the resumed model "
            f"computes. Resume with lora={{'alpha': {float(old)}}}, or start a new run (another out_dir, or "
            "overwrite=True) to train with the new alpha.")


def _position_limit(model: nn.Module) -> int | None:
    """How many tokens a text model reads: its learned position embeddings' rows (less RoBERTa's padding offset)."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            return module.num_embeddings - offset
    return None


def _check_text_length(input_ids: torch.Tensor, limit: int, model_name: str) -> None:
    """Refuse texts longer than the model's positions (the embedding lookup would fail deep inside the model)."""
    if input_ids.shape[-1] > limit:
        raise DataError(f"a text batch holds texts of {input_ids.shape[-1]} tokens, but {model_name} reads at most "
                        f"{limit} (its position embeddings): truncate them, e.g. warmstart.data.text_loader(..., "
                        f"max_length={limit}) (max_length=None never truncates), or tokenizer(texts, truncation=True, "
                        f"max_length={limit})")


def _check_class_targets(output: Any, target: Any) -> None:
    """Refuse labels that cannot index a classifier's ``(B, C)`` scores: a ``(B, 1)`` column, or float class numbers."""
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.dim() == 2
            and output.is_floating_point() and output.shape[1] >= 2):
        return
    fix = "labels.long()" if target.is_floating_point() else ""
    if target.dim() == 2 and target.shape[1] == 1:
        fix = "labels.squeeze(-1)" + (".long()" if target.is_floating_point() else "")
        problem = f"shape {tuple(target.shape)}"
    elif target.dim() == 1 and target.is_floating_point():
        problem = f"dtype {target.dtype}"
    else:
        return
    raise DataError(f"the labels have {problem}, but the model's outputs are {tuple(output.shape)} class scores, which "
                    f"take one integer class index per sample, shape ({output.shape[0]},) in [0, {output.shape[1]}): "
                    f"pass {fix}. (Probabilities per class are (B, {output.shape[1]}) float soft labels; a regression "
                    "needs a model with one output, targets of the same (B, 1) shape and a loss_fn such as "
                    "torch.nn.functional.mse_loss.)")


def _backbone_groups(model: nn.Module, groups: Sequence[Any] | None, head_names: set[str]) -> list[LayerGroup]:
    """Layer groups with the head's parameters taken out (a group left empty is dropped)."""
    head_ids = {id(p) for n, p in model.named_parameters() if n in head_names}
    result = []
    for group in layer_groups(model, groups):
        modules = [m for m in group.modules if any(id(p) not in head_ids for p in m.parameters())]
        if modules:
            result.append(_HeadlessGroup(group.name, modules, head_ids))
    return result


class _HeadlessGroup(LayerGroup):
    """A layer group whose parameters exclude the head's (when the head sits inside the group)."""

    def __init__(self, name: str, modules: list[nn.Module], excluded: set[int]):
        super().__init__(name=name, modules=modules)
        self.excluded = excluded

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in super().parameters() if id(p) not in self.excluded]


def _reinitialise(groups: list[LayerGroup]) -> None:
    for group in groups:
        for module in group.modules:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()


def _shuffles(loader: Any) -> bool:
    if isinstance(loader, DataLoader):
        return isinstance(loader.sampler, RandomSampler) or getattr(loader.sampler, "shuffle", False)
    return bool(getattr(loader, "shuffle", False))


def _all_samples(loader: DataLoader | InMemoryLoader) -> DataLoader | InMemoryLoader:
    """The loader over its whole data set in order (not this rank's share), one process's batch size."""
    if isinstance(loader, InMemoryLoader):
        return loader.shard(0, 1, pad=False)
    return rebuild_loader(loader, sampler=None, drop_last=False)


def _without_augmentation(loader: Iterable[Any]) -> Iterable[Any]:
    """The loader's samples in order, without random augmentation where the loader allows it.

    The deterministic steps of the transform (a resize or normalisation, e.g.
    :class:`warmstart.models.ImageInput`) are kept: the model needs them to read the inputs
    (:func:`warmstart.data.without_augmentation`, the one rule for what augmentation is).
    """
    if isinstance(loader, InMemoryLoader):
        transform = without_augmentation(loader.transform)
        if transform is loader.transform and is_random(transform, probe=loader.inputs[:loader.batch_size]):
            warnings.warn("the linear-probe cache computes features once, and this InMemoryLoader's transform gives "
                          "other outputs at each call but cannot be split into its random and its fixed steps: one "
                          "random view is cached. Pass the steps as an nn.Sequential or torchvision Compose, or use "
                          "LinearProbe(cache_features=False) to augment every epoch", stacklevel=4)
        return loader.clone(shuffle=False, transform=transform, with_index=False)  # keeps this rank's share
    if isinstance(loader, DataLoader):
        sampler = loader.sampler if isinstance(loader.sampler, (DistributedSampler, ShardSampler)) else None
        # in order, keeping this rank's share
        return rebuild_loader(loader, dataset=dataset_without_augmentation(loader.dataset), sampler=sampler,
                              drop_last=False)
    return loader
