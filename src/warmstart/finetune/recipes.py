"""One-call fine-tuning that chooses how to fine-tune by validation, not by a fixed default."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart import distributed
from warmstart.config import OptimizerConfig
from warmstart.errors import ConfigError
from warmstart.evaluation import evaluate
from warmstart.finetune.ensemble import Ensemble
from warmstart.finetune.methods import Full, LinearProbe, LoRA, Method, Partial, build_method
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.heads import find_head, swap_head
from warmstart.selection import (Selection, SelectionOptions, epochs_option, run_folder, selection_options,
                                 train_by_selection, trainer_option, validation_accuracy)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to fine-tune, as :func:`fine_tune` tries it.

    Attributes:
        name: its name in results and reports.
        warm_up: epochs of a linear probe (the head alone) before the main phase.
        method: the main phase's fine-tuning method (which groups train, at which rates).
        pretrained: start from the model's weights; ``False`` re-initialises every layer (the
            control that says whether the pretrained weights help at all).
    """

    name: str
    warm_up: int
    method: Method
    pretrained: bool = True


CNN_LR, TRANSFORMER_LR = 3e-3, 1e-4  # the head's default learning rate (see default_lr)
LORA_LR = 1e-3  # LoRA adapters train at least this fast (their B starts at zero): 10x a transformer's 1e-4
MIN_STEPS = 100  # the final run trains at least this many optimizer steps (bench/finetune_real.py: 40 cost 8-11 points)
DEFAULT_EPOCHS = 10
STAGES = ("probe", "full", "second/probe", "second/full")  # the sub-folders of out_dir a call writes


def default_candidates(layer_decay: float | None = 0.9, lr: float | None = None, warm_up: int = 2) -> list[Candidate]:
    """The candidates :func:`fine_tune` compares: how much of the network trains, and no pretraining.

    - ``recipe``: ``warm_up`` epochs of linear probe, then every layer with layer-wise decay
      (timm/fastai style; a probe then a fine-tune, LP-FT);
    - ``full``: every layer at the head's rate from the start (right when the features must change);
    - ``lora``: LoRA adapters (r=8, alpha 16) on a frozen backbone, and the head (when peft is
      installed); the adapters train at ``max(lr, 1e-3)`` (``lr``: the head's);
    - ``linear_probe``: only the head trains, on cached features (cheap);
    - ``no_pretraining``: ``full`` from random weights: the control.

    ``Candidate("freeze_first", 2, Partial(k=1, layer_decay=0.9))`` (the first layer group frozen)
    was a default until 2026-12-07; pass it in ``candidates`` to try it.
    """
    candidates = [Candidate("recipe", warm_up, Full(layer_decay=layer_decay)),
                  Candidate("full", 0, Full(backbone_lr_mult=1.0))]
    if importlib.util.find_spec("peft") is not None:
        mult = 1.0 if lr is None else max(1.0, LORA_LR / lr)
        candidates.append(Candidate("lora", 0, LoRA(r=8, alpha=16, dropout=0.0, backbone_lr_mult=mult)))
    return [*candidates, Candidate("linear_probe", 0, LinearProbe()),
            Candidate("no_pretraining", 0, Full(backbone_lr_mult=1.0), pretrained=False)]


def default_epochs(loader: Any) -> int:
    """``max(10, ceil(100 / batches per epoch))``: at least :data:`MIN_STEPS` optimizer steps (10 epochs without a length).

    On 100 labelled images in batches of 25, 10 epochs are 40 steps: EfficientNet-Lite0 fine-tuned
    that way scored 8-11 points below 100 steps on MNIST and the animal shapes (2 seeds each;
    200 steps scored within 2 points of 100).
    """
    batches = len(loader) if hasattr(loader, "__len__") else 0
    return max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / batches)) if batches else DEFAULT_EPOCHS


@dataclasses.dataclass
class FineTuneResult:
    """The outcome of :func:`fine_tune`.

    Attributes:
        model: the fine-tuned model: the object that was passed in, or, when two candidates were
            averaged (``ensemble``), an :class:`Ensemble` of it and a second fine-tuned copy.
        history: per-epoch metrics of the final training; each entry has a ``phase`` key (the
            second member's are ``"second_full"``, the ensemble's validation ``"ensemble"``).
        trainer: the trainer of the choice's last phase (for checkpoints; it evaluates the passed
            model alone: evaluate ``model`` with :func:`warmstart.evaluate`).
        choice: the candidate that was trained on all labels (``"recipe"`` without selection).
        scores: mean validation accuracy of each candidate (empty without selection).
        selection: the choice in full: each candidate's mean and standard error over the folds,
            how it was validated, the trainings it took and their cost (``None`` without selection).
        members: the candidates averaged in ``model`` (empty when it is one network).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    trainer: FinetuneTrainer
    choice: str = "recipe"
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    selection: Selection | None = None
    members: tuple[str, ...] = ()


def fine_tune(model: nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None,
              num_classes: int | None = None, epochs: int | None = None, *, select: bool = True,
              candidates: list[Candidate] | None = None, val_fraction: float = 0.2, folds: int = 5,
              selection: SelectionOptions | Mapping[str, Any] | None = None,
              optimizer: OptimizerConfig | Mapping[str, Any] | None = None, lr: float | None = None,
              weight_decay: float | None = None, scheduler: Any = None, freeze_epochs: int | None = None,
              layer_decay: float | None = 0.9, backbone_lr_mult: float = 1.0, label_smoothing: float = 0.1,
              proximal: float | None = None, lora: Mapping[str, Any] | None = None, head: str | None = None,
              keep_head: bool = False, head_init: str = "normal", freeze_bn: bool = False, wise: float | None = None,
              ensemble: bool | None = None, out_dir: str | os.PathLike | None = None, resume: str | None = None,
              **trainer_kwargs: Any) -> FineTuneResult:
    """Fine-tune a pretrained classifier in one call, choosing how by validation accuracy.

    With ``select=True`` (the default) each candidate of :func:`default_candidates` (freeze depth,
    backbone learning rate, linear-probe warm-up, and training from random weights as the control)
    trains a copy of the model and is scored through :func:`warmstart.selection.train_by_selection`
    (on ``val_loader``, else by stratified ``folds``-fold cross-validation under 2,000 labels, else
    on ``val_fraction`` held out). The first candidate (``recipe``) is kept unless another beats it
    beyond chance (:func:`warmstart.selection.choose`: with equal candidates another is chosen in
    under 5% of draws); the choice then trains ``epochs`` epochs on all the labels. A choice that
    could not tell the candidates apart says so (``result.selection.note``, a warning); a win of
    ``no_pretraining`` is stated in a warning, since the pretrained weights then did not help. The
    trials cost about 2 runs, the call about 3x one fine-tune (``result.selection.cost``). With
    ``out_dir`` the trials and the choice are recorded in ``out_dir/selection.json``, the final
    training writes ``probe/`` and ``full/`` there, and ``resume="last"`` continues a stopped call
    without repeating recorded trials.

    With ``select=False``, the fastai-style recipe runs once: ``freeze_epochs`` epochs of linear
    probe, then every layer with the head at ``lr`` and backbone group ``i`` of ``G`` at
    ``lr * layer_decay ** (G - i)`` (or ``lr * backbone_lr_mult`` when ``layer_decay`` is None).

    Where no trial could run (too few validation labels to tell any gain under 10 points from
    noise: about 200 labels with 5 candidates), ``ensemble=None`` (the default) hedges between
    the two first pretrained candidates (``recipe`` and ``full``): both train on all the labels
    and ``result.model`` is their :class:`Ensemble` (probabilities averaged), ``model`` itself
    the first. On EfficientNet-Lite0 at 10 labels per class the ensemble scored above both
    members on every seed tried (``bench/finetune_real.py``); it costs a second training and
    twice the inference. ``ensemble=True`` averages the choice with the next-best pretrained
    candidate after any choice, ``False`` never.

    With ``lora={"r": 8, "alpha": 16, "targets": "auto", "dropout": 0.05}`` (or ``{}`` for these
    defaults) the model is fine-tuned with LoRA adapters instead, in one phase of ``epochs``: the
    adapters and the new head train, the backbone stays frozen (``result.choice == "lora"``; no
    selection). A single candidate in ``candidates`` is likewise trained without scoring.

    Every run uses the same optimizer (AdamW, weight decay 0.01 unless ``optimizer`` says
    otherwise; no decay on biases and norms; the head's lr 3e-3, or 1e-4 for a transformer, see
    :func:`default_lr`), a cosine schedule (a 5% warmup in the main phase
    unless ``scheduler`` is given) and cross-entropy with ``label_smoothing``. A new task gets a
    new head (``num_classes``), even when the class count matches; ``keep_head=True`` keeps it.

    Args:
        model: the pretrained classifier (changed in place).
        train_loader: training batches ``(inputs, target)``.
        val_loader: evaluated after every epoch; with ``select`` the candidates are scored on it.
        num_classes: classes of the new task (``None``: same task, keep the head).
        epochs: epochs of the final training (default :func:`default_epochs`: at least 100
            optimizer steps and 10 epochs; the trainer option ``max_epochs`` is the same thing).
        select: choose among ``candidates`` by validation accuracy.
        candidates: the ways to try (default :func:`default_candidates`).
        val_fraction: share of the labels held out for the choice when there is no ``val_loader`` and
            2,000 labels or more.
        folds: folds of the cross-validation on fewer labels.
        selection: more options of the choice (:class:`warmstart.selection.SelectionOptions` or a
            dict of its fields: ``repeats``, ``budget``, ``alpha``, ``max_detectable``,
            ``min_trial_steps``, ...); ``folds`` and ``val_fraction`` fill what it leaves out.
        optimizer: an :class:`OptimizerConfig` or dict (``name``, ``lr`` of the head, ...).
        lr: shorthand for the optimizer's ``lr`` (not together with ``optimizer``; default
            :func:`default_lr`).
        weight_decay: shorthand for the optimizer's ``weight_decay`` (not together with ``optimizer``).
        scheduler: the schedule of the main phase (a :class:`SchedulerConfig` or dict).
        freeze_epochs: epochs of the recipe's linear-probe warm-up (0 skips it; default 2, and 0 for a
            transformer: at its lr of 1e-4 the warm-up moves the head little, and all-MiniLM-L6-v2 on
            10 labels per class scored 79.5 without it against 77.2 with it, 3 seeds).
        layer_decay: learning-rate decay per layer group from the head down.
        backbone_lr_mult: backbone learning-rate multiplier when ``layer_decay`` is None.
        label_smoothing: label smoothing of the cross-entropy.
        proximal: ``lam`` of a proximal term toward the pretrained weights in the main phase
            (under LoRA, toward the adapters' starting values).
        lora: LoRA options: fine-tune with adapters (see :class:`warmstart.finetune.LoRA`).
        head: module path of the head (found automatically when omitted).
        keep_head: keep the model's head even though ``num_classes`` is given.
        wise: WiSE-FT (Wortsman et al. 2022): after the main phase, the weights become
            ``(1 - wise) * w_start + wise * w_tuned``, ``w_start`` the weights as the main phase
            began (the pretrained backbone and the probe's head, after a warm-up); 1 keeps the
            fine-tuned weights. Not for LoRA or the linear probe, which do not move the backbone.
        freeze_bn: hold the backbone's BatchNorm layers in eval mode in the main phase (see
            :class:`FinetuneTrainer`); never for a candidate from random weights, whose statistics
            mean nothing.
        ensemble: average two fine-tuned candidates (see above): ``None`` where no trial could
            run, ``True`` always, ``False`` never.
        head_init: the new head's initialisation (see :func:`warmstart.heads.init_head`): the small
            ``"normal"`` N(0, 0.01^2) for pretrained features; ``"default"`` (the layer's own
            ``reset_parameters``) for a model trained from random weights, such as a
            no-pretraining control, which the small init handicaps. The ``no_pretraining``
            candidate re-initialises every layer, its head included, with ``reset_parameters``.
        out_dir: folder for the choice's record and the final training's checkpoints and logs
            (``selection.json``, ``probe/`` and ``full/``).
        resume: ``"last"`` continues the call recorded in ``out_dir``.
        **trainer_kwargs: more :class:`warmstart.Trainer` options (``precision``, ``device``,
            ``seed``, ``overwrite``, ``config``, ...).

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        ConfigError: ``optimizer`` together with ``lr``/``weight_decay``, ``keep_head`` with a head
            of another class count, no candidates, both ``epochs`` and ``max_epochs``, or a
            ``resume`` other than ``"last"``, or ``ensemble=True`` with fewer than two pretrained
            candidates (``select=False``, ``lora``).
        DataError: ``select`` without a ``val_loader`` on a loader that cannot be split, with too
            few labelled samples to hold a validation split out, or with targets that are not classes.
        RunExistsError: ``out_dir`` holds an earlier run, not resumed and without ``overwrite=True``.

    Examples:
        >>> from warmstart.models import small_cnn
        >>> data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,)))] * 2
        >>> result = fine_tune(small_cnn(width=4), data, num_classes=3, epochs=1, select=False, freeze_epochs=1,
        ...                    progress=False)
        >>> [h["phase"] for h in result.history]
        ['linear_probe', 'full']
    """
    epochs = epochs_option(epochs, trainer_kwargs, "fine_tune") or default_epochs(train_loader)
    optimizer = _recipe_optimizer(optimizer, lr, weight_decay, model)
    warm_up = (0 if is_transformer(model) else 2) if freeze_epochs is None else freeze_epochs
    top, overwrite = run_folder(out_dir, trainer_kwargs)
    trainer_kwargs = {k: v for k, v in trainer_kwargs.items() if k not in ("out_dir", "overwrite")}
    _prepare_head(model, num_classes, head, keep_head, head_init)
    _check_wise(wise)
    run = functools.partial(_train, optimizer=optimizer, scheduler=scheduler, label_smoothing=label_smoothing,
                            proximal=proximal, head=head, freeze_bn=freeze_bn, wise=wise, trainer_kwargs=trainer_kwargs)
    if lora is not None:
        choices = [Candidate("lora", 0, build_method("lora", dict(lora)))]
    elif not select:
        choices = [Candidate("recipe", warm_up, Full(backbone_lr_mult=backbone_lr_mult, layer_decay=layer_decay))]
    else:
        choices = candidates if candidates is not None else default_candidates(layer_decay, _head_lr(optimizer),
                                                                                warm_up)
    if not choices:
        raise ConfigError("fine_tune(select=True) needs at least one candidate")
    by_name = {c.name: c for c in choices}
    pretrained = [c.name for c in choices if c.pretrained]
    if ensemble and len(pretrained) < 2:
        raise ConfigError(f"fine_tune(ensemble=True) averages two pretrained candidates, but this call has "
                          f"{len(pretrained)} ({', '.join(pretrained) or 'none'}): drop select=False and lora=, or "
                          "pass candidates with two pretrained ways")
    pristine: dict[str, Any] = {}  # the model before the final run, and that run's seed (the second member's start)

    def averages(trials_ran: bool) -> bool:
        return len(pretrained) >= 2 and (bool(ensemble) or (ensemble is None and not trials_ran))

    def trial(name: str, fit_on: Any, score_on: Any, trial_epochs: int, seed: int) -> float:
        pristine["tried"] = True
        copy_of = copy.deepcopy(model)  # the model itself is left as it is
        if not by_name[name].pretrained:
            _reinitialise(copy_of)
        _, trainer = run(copy_of, by_name[name], fit_on, None, trial_epochs, None, quiet=True, seed=seed)
        return validation_accuracy(trainer.evaluate(score_on), "fine_tune")

    def final(name: str, seed: int | None, resume: str | None) -> tuple[list[dict[str, Any]], FinetuneTrainer]:
        if averages("tried" in pristine):
            pristine.update(model=copy.deepcopy(model), seed=seed)
        if not by_name[name].pretrained:
            _reinitialise(model)
        with warnings.catch_warnings():
            if resume is not None and top is not None and (Path(top) / "second").is_dir():
                # killed while the second member trained: this one finished, and is only read back
                warnings.filterwarnings("ignore", message=".*nothing to train")
            return run(model, by_name[name], train_loader, val_loader, epochs, top, seed=seed, resume=resume,
                       overwrite=overwrite)

    picked, (history, trainer) = train_by_selection(
        list(by_name), trial, final, train_loader, epochs, caller="fine_tune", val_loader=val_loader, out_dir=top,
        overwrite=overwrite, resume=resume, seed=trainer_option(trainer_kwargs, "seed"),
        device=trainer_option(trainer_kwargs, "device", "auto"),
        options=selection_options(selection, val_fraction=val_fraction, folds=folds), stages=STAGES,
        progress=_progress(trainer_kwargs))
    if picked is not None and not by_name[picked.choice].pretrained:
        warnings.warn(f"fine_tune: training from random weights scored best on validation ({picked.summary()}); the "
                      "pretrained weights do not help this task", stacklevel=2)
    choice = picked.choice if picked is not None else choices[0].name
    scores = {} if picked is None else {name: score.mean for name, score in picked.scores.items()}
    result = FineTuneResult(model=model, history=history, trainer=trainer, choice=choice, scores=scores,
                            selection=picked)
    if "model" in pristine and averages(picked is not None and picked.trainings > 0):
        others = [n for n in pretrained if n != choice]
        other = max(others, key=scores.__getitem__) if scores else others[0]  # the runner-up, else the next in order
        _announce(trainer_kwargs, f"fine_tune: averaging '{choice}' with '{other}' (ensemble="
                  f"{'True' if ensemble else 'None: no trial could run'}; ensemble=False trains one network)")
        second = pristine["model"]
        seed = pristine["seed"]
        more, _ = run(second, by_name[other], train_loader, val_loader, epochs,
                      None if top is None else Path(top) / "second", seed=None if seed is None else seed + 1,
                      resume=resume, overwrite=overwrite)
        result.model, result.members = Ensemble([model, second]), (choice, other)
        history += [{**h, "phase": f"second_{h['phase']}"} for h in more]
        if val_loader is not None:
            metrics = evaluate(result.model, val_loader, device=trainer.device, precision=trainer.precision,
                               threads=trainer.config.threads)
            history.append({"phase": "ensemble", **{f"val_{k}": v for k, v in metrics.items()}})
    return result


def _train(model: nn.Module, candidate: Candidate, train: Any, val: Any, epochs: int, out_dir: Any, *,
           optimizer: Any, scheduler: Any, label_smoothing: float, proximal: float | None, head: str | None,
           freeze_bn: bool, trainer_kwargs: dict[str, Any], wise: float | None = None, quiet: bool = False,
           seed: int | None = None, resume: str | None = None,
           overwrite: bool = False) -> tuple[list[dict[str, Any]], FinetuneTrainer]:
    """Train ``model`` the candidate's way: an optional linear-probe warm-up, then its main phase.

    Each phase writes its own folder of ``out_dir`` (``probe/``, ``full/``) and continues its own
    checkpoint with ``resume``; a trial (``out_dir=None``) writes nothing.
    """
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    options = {**trainer_kwargs, **({"progress": False} if quiet else {}), **({} if seed is None else {"seed": seed}),
               "overwrite": overwrite}

    def folder(name: str) -> str | None:
        return None if out_dir is None else str(Path(out_dir) / name)

    history: list[dict[str, Any]] = []
    if candidate.warm_up:
        probe = FinetuneTrainer(model, optimizer, loss_fn, method=LinearProbe(), head=head,
                                max_epochs=candidate.warm_up, scheduler={"name": "cosine"}, out_dir=folder("probe"),
                                **options)
        _announce(options, f"fine_tune phase 1/2: linear probe, the head alone on cached features "
                           f"({candidate.warm_up} epochs)")
        history += [{"phase": "linear_probe", **h} for h in probe.fit(train, val, resume=resume)]
    anchored = proximal if candidate.pretrained and not isinstance(candidate.method, LinearProbe) else None
    trainer = FinetuneTrainer(model, optimizer, loss_fn, head=head, proximal=anchored, method=candidate.method,
                              freeze_bn=freeze_bn and candidate.pretrained,
                              max_epochs=epochs, scheduler=scheduler or {"name": "cosine", "warmup_epochs": 0.05 * epochs},
                              out_dir=folder("full"), **options)
    phase = f"{2 if candidate.warm_up else 1}/{2 if candidate.warm_up else 1}"
    _announce(options, f"fine_tune phase {phase}: {candidate.name} ({_describe(candidate.method)}, {epochs} epochs)")
    interpolates = wise is not None and candidate.pretrained and not isinstance(candidate.method, (LinearProbe, LoRA))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if interpolates else None
    history += [{"phase": "full", **h} for h in trainer.fit(train, val, resume=resume)]
    if start is not None:
        history.append({"phase": "wise", "wise": wise, **_interpolate(trainer, start, wise, val, folder("full"))})
    return history, trainer


def _interpolate(trainer: FinetuneTrainer, start: dict[str, torch.Tensor], wise: float, val: Any,
                 folder: str | None) -> dict[str, float]:
    """WiSE-FT: the model's weights moved to ``(1 - wise) * start + wise * now``; the validation of the result."""
    model = trainer.unwrapped_model
    now = model.state_dict()
    model.load_state_dict({k: torch.lerp(start[k].to(v.device), v, wise) if v.is_floating_point() else v
                           for k, v in now.items()})
    if folder is not None:  # the weights the user gets; last.pt keeps the fine-tuned ones to resume from
        trainer.save_weights(Path(folder) / "last.safetensors", extra={"wise": wise})
    return {} if val is None else {f"val_{k}": v for k, v in trainer.evaluate(val).items()}


def _check_wise(wise: Any) -> None:
    if wise is not None and (isinstance(wise, bool) or not isinstance(wise, (int, float)) or not 0 < wise <= 1):
        raise ConfigError(f"wise is the share of the fine-tuned weights in WiSE-FT's interpolation, in (0, 1], got "
                          f"{wise!r}: 0.5 is the usual choice, 1 keeps the fine-tuned weights")


def _describe(method: Method) -> str:
    if isinstance(method, LinearProbe):
        return "the head alone"
    if isinstance(method, LoRA):
        return f"LoRA adapters r={method.r}, alpha={method.alpha} on a frozen backbone, and the head"
    frozen = f"first {method.k} layer group(s) frozen, " if isinstance(method, Partial) else ""
    rates = (f"layer-wise lr decay {method.layer_decay}" if method.layer_decay is not None
             else f"backbone lr x{method.backbone_lr_mult}")
    return frozen + rates


def _reinitialise(model: nn.Module) -> None:
    """Draw every layer's weights afresh (``reset_parameters``): the model forgets its pretraining."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _announce(options: Mapping[str, Any], text: str) -> None:
    if _progress(options) and distributed.is_main_process():
        print(text, flush=True)


def _progress(options: Mapping[str, Any]) -> bool:
    return bool(trainer_option(options, "progress", True))


def default_lr(model: nn.Module) -> float:
    """The head's learning rate when none is given: 1e-4 for a transformer, 3e-3 for a network of convolutions.

    Measured on the real networks the library ships (``bench/finetune_real.py``): the recipe at 3e-3
    fine-tunes EfficientNet-Lite0 well and collapses all-MiniLM-L6-v2 to chance (44% on two classes),
    which trains at 1e-4 as BERT-style encoders are fine-tuned (Devlin et al. use 2e-5 to 5e-5 for
    the whole network).
    """
    return TRANSFORMER_LR if is_transformer(model) else CNN_LR


def is_transformer(model: nn.Module) -> bool:
    """True for a Hugging Face model or a network with attention layers (``nn.MultiheadAttention``, ``*Attention``)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "model_type"):
        return True
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith(("Attention", "SelfAttention"))
               for m in model.modules())


def _head_lr(optimizer: Any) -> float | None:
    lr = optimizer.get("lr") if isinstance(optimizer, Mapping) else getattr(optimizer, "lr", None)
    return None if lr is None else float(lr)


def _recipe_optimizer(optimizer: Any, lr: float | None, weight_decay: float | None, model: nn.Module) -> Any:
    if optimizer is not None and (lr is not None or weight_decay is not None):
        raise ConfigError("pass the learning rate and weight decay inside optimizer=..., or lr=/weight_decay= without "
                          "optimizer, not both")
    if optimizer is not None:
        return optimizer
    return {"name": "adamw", "lr": default_lr(model) if lr is None else lr,
            "weight_decay": 0.01 if weight_decay is None else weight_decay}


def _prepare_head(model: nn.Module, num_classes: int | None, head: str | None, keep_head: bool, init: str) -> None:
    """A new head for a new task; keeping one is allowed only when it has the right size."""
    if num_classes is None:
        return
    if not keep_head:
        swap_head(model, num_classes, head=head, init=init)
    elif find_head(model, head).num_classes != num_classes:
        raise ConfigError(f"keep_head=True, but the head has {find_head(model, head).num_classes} outputs and the task "
                          f"{num_classes} classes; drop keep_head to give the model a new head")

