"""``warmstart run``: pretrain, fine-tune with every method beside its control, distil the best into a small student.

Every stage is a job of its own (a :class:`PretrainJob`, :class:`FinetuneJob` or :class:`DistillJob` in a
sub-folder, with its ``job.yaml``), run by the same runner as ``warmstart pretrain|finetune|distill``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warmstart.errors import ConfigError
from warmstart.evaluation import evaluate
from warmstart.data import DataBundle, build_data
from warmstart.jobs.runner import JobRun, Method, Trained, run_job
from warmstart.jobs.schema import DistillJob, FinetuneJob, PipelineJob, PretrainJob, StageConfig
from warmstart.jobs.stages import (StageResult, build_job_model, count_parameters, resolve_seed, resume_seed,
                                   run_distill, run_finetune, run_pretrain)
from warmstart.optim import check_settings

# each method of finetune.methods as a finetune job: (its method, options, starts pretrained, label, its control)
METHOD_JOBS: dict[str, tuple[str, dict[str, Any], bool, str, str | None]] = {
    "scratch": ("full", {"backbone_lr_mult": 1.0}, False, "from scratch (no pretrained weights)", None),
    "linear_probe": ("linear_probe", {}, True, "linear probe (frozen backbone)", "scratch"),
    "partial": ("partial", {}, True, "partial (first layer group frozen)", "scratch"),
    "full": ("full", {}, True, "full fine-tune (backbone at 0.1x lr)", "scratch"),
    "gradual": ("gradual", {}, True, "gradual unfreezing", "scratch"),
    "proximal": ("full", {}, True, "full fine-tune + proximal term", "scratch"),
    "recipe": ("recipe", {}, True, "fine_tune() recipe", "recipe_scratch"),
    "recipe_scratch": ("recipe", {}, False, "fine_tune() recipe, no pretrained weights", None),
}
CONTROLS = ("scratch", "recipe_scratch")  # no pretrained weights: what each transfer gain is measured against

# every sub-folder a run may write (a recipe's phases have their own): an earlier run's are refused or cleared together
STAGE_FOLDERS = ("pretrain", *(f"finetune/{method}{phase}" for method, (how, *_) in METHOD_JOBS.items()
                               for phase in ("", *(("/probe", "/full") if how == "recipe" else ()))),
                 "distill/student_scratch", "distill/student_distilled", "distill/student_hard_same_steps")


def run_pipeline(job: PipelineJob, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run the whole story of ``job``; returns ``results.json`` (see :func:`warmstart.jobs.runner.run_job`).

    1. Pretrain ``job.model`` on ``job.source``; with ``finetune.keep_head`` (the target has the
       source's classes), measure it zero-shot on the target.
    2. Fine-tune it on ``job.target`` with each of ``finetune.methods``, each beside its control
       (the same training from random weights).
    3. The teacher (the recipe unless another fine-tuned model beats it on validation beyond chance,
       :func:`warmstart.selection.choose`) is distilled into ``distill.student`` (at least 10x fewer
       parameters), beside the same student on the labels alone for the same epochs
       (``student_scratch``) and, when the distillation took more optimizer steps (``distill.unlabelled``:
       its epochs run over every training image), for as many steps (``student_hard_same_steps``).

    Choices use the target's validation split; test accuracy is measured once per model, at the
    end of its stage. Writes ``results.json``, ``report.md``, plots and each stage's folder into
    ``job.out_dir``; ``resume`` continues a stopped run stage by stage.

    Raises:
        ConfigError: no validation split on the target, or a student that is not 10x smaller.
        OutDirBusyError: another run holds ``out_dir``.
        RunExistsError: ``out_dir`` holds an earlier run (its files, or its stages' folders) and
            ``trainer.overwrite`` is False (``--overwrite``).
    """
    if job.target.val_per_class is None:
        raise ConfigError("warmstart run picks the teacher by validation accuracy, never by test accuracy: set "
                          "target.val_per_class (labelled images per class held out of the target's training split)")
    for name in ("pretrain", "finetune", "distill"):  # every stage's settings, before the first stage trains
        stage = getattr(job, name)
        check_settings(stage.trainer, stage.optimizer, stage.scheduler, where=name)
    if resume:
        resume_seed(job, Path(job.out_dir).expanduser())
    seed = resolve_seed(job)
    source, target = build_data(job.source, seed), build_data(job.target, seed)
    _check_models(job, target)
    stages = _Stages(job, source, target, progress, resume)
    methods = [Method("pretrain", f"pretrained on {job.source.name} (its own test set)", stages.pretrain)]
    if job.finetune.keep_head:
        methods.append(Method("zero_shot", "pretrained, zero-shot on the target", stages.zero_shot))
    methods += [Method(m, METHOD_JOBS[m][3], stages.finetune(m), METHOD_JOBS[m][4] if METHOD_JOBS[m][4] in
                       job.finetune.methods else None, teacher=m not in CONTROLS) for m in job.finetune.methods]
    methods += [Method("student_scratch", "student on the labels alone, same epochs (control)", stages.hard_labels,
                       student=True),
                Method("student_distilled", "student distilled from the teacher", stages.distil,
                       ("student_hard_same_steps", "student_scratch"), student=True),
                Method("student_hard_same_steps", "same student, labels alone, as many optimizer steps (control)",
                       stages.same_steps, student=True)]
    student = job.distill.student
    story = (f"Pretrained `{job.model.name}` {job.model.args} on `{job.source.name}`, then fine-tuned it on "
             f"`{job.target.name}` with {job.target.shots or 'all'} labelled examples per class by each method, "
             f"each beside the same training from random weights. Choices use {job.target.val_per_class} validation "
             "images per class held out of the target's training split; test accuracy is measured once per model "
             f"(the pretraining row: on the source's test split). The teacher teaches `{student.name}` "
             f"{student.args} on " + ("every training image without its label" if job.distill.unlabelled else
                                      "the labelled images") + ", beside the same student on the labels alone.")
    return run_job(job, methods, test=target.test, val=target.val, title="warmstart run report", story=story,
                   progress=progress, default_teacher="recipe", stages=STAGE_FOLDERS, resume=resume)


def _check_models(job: PipelineJob, target: DataBundle) -> None:
    """The model and the student build for the target, the student is 10x smaller, and the distillation has its data."""
    model_params = count_parameters(build_job_model(job.model, target))
    student_params = count_parameters(build_job_model(job.distill.student, target, key="distill.student"))
    if student_params * 10 > model_params:
        raise ConfigError(f"the student has {student_params} parameters, more than 1/10 of the model's "
                          f"{model_params}: make it smaller (e.g. distill.student.args.width)")
    if job.distill.unlabelled and target.pool is None:
        raise ConfigError(f"distill.unlabelled distils on the target's training images without labels, which needs a "
                          f"bundled target (mnist5k, digits, fake), not '{job.target.name}'; set distill.unlabelled: "
                          "false to distil on the labelled images")


def _trained(result: StageResult, **facts: Any) -> Trained:
    return Trained(result.model, result.history, result.test, result.val, facts, result.weights)


class _Stages:
    """The stages of one run, each the single-stage job of ``warmstart pretrain|finetune|distill`` in a sub-folder."""

    def __init__(self, job: PipelineJob, source: DataBundle, target: DataBundle, progress: bool, resume: bool):
        self.job, self.source, self.target, self.progress, self.resume = job, source, target, progress, resume
        self.pretrained: Path | None = None

    @staticmethod
    def settings(run: JobRun, stage: StageConfig, folder: str, **changes: Any) -> dict[str, Any]:
        """A stage's sections as its sub-job takes them, writing into ``out_dir/folder``."""
        settings = run.settings(stage, folder, **changes)
        return {"trainer": settings["config"], "optimizer": settings["optimizer"], "scheduler": settings["scheduler"]}

    def pretrain(self, run: JobRun, seed: int) -> Trained:
        job = self.job
        result = run_pretrain(PretrainJob(data=job.source, model=job.model, **self.settings(run, job.pretrain, "pretrain")),
                              data=self.source, resume=self.resume)
        self.pretrained = result.weights
        return Trained(result.model, result.history, result.test, {}, {"dataset": job.source.name}, result.weights)

    def zero_shot(self, run: JobRun, seed: int) -> Trained:
        """The pretrained model as it is, on the target (whose classes are the source's)."""
        model = run.trained["pretrain"].model
        return Trained(model, test=evaluate(model, self.target.test), val=evaluate(model, self.target.val))

    def finetune(self, method: str) -> Any:
        job_method, options, starts_pretrained, _, _ = METHOD_JOBS[method]

        def train(run: JobRun, seed: int) -> Trained:
            stage = self.job.finetune
            result = run_finetune(FinetuneJob(
                data=self.job.target, model=self.job.model, **self.settings(run, stage, f"finetune/{method}"),
                pretrained=str(self.pretrained) if starts_pretrained else None, method=job_method, method_args=options,
                proximal=stage.proximal if method == "proximal" else None, label_smoothing=stage.label_smoothing,
                keep_head=stage.keep_head), data=self.target, resume=self.resume)
            return _trained(result, **{k: result.extra[k] for k in ("choice", "scores") if k in result.extra})

        return train

    def hard_labels(self, run: JobRun, seed: int, name: str = "student_scratch", max_steps: int | None = None) -> Trained:
        """The student on the labels alone (``max_steps``: that many optimizer steps instead of the epochs)."""
        changes = {} if max_steps is None else {"max_epochs": None, "max_steps": max_steps}
        result = run_finetune(FinetuneJob(
            data=self.job.target, model=self.job.distill.student, **self.settings(run, self.job.distill,
                                                                                       f"distill/{name}", **changes),
            method="full", method_args={"backbone_lr_mult": 1.0}), data=self.target, resume=self.resume)
        return _trained(result, steps=result.steps)

    def distil(self, run: JobRun, seed: int) -> Trained | None:
        if run.teacher is None:  # only controls were fine-tuned: no transfer model to teach
            return None
        stage, teacher = self.job.distill, run.trained[run.teacher]
        result = run_distill(DistillJob(
            teacher=self.job.model, teacher_weights=str(teacher.weights), student=stage.student, data=self.job.target,
            **self.settings(run, stage, "distill/student_distilled"), temperature=stage.temperature, alpha=stage.alpha,
            unlabelled=stage.unlabelled), data=self.target, resume=self.resume)
        return _trained(result, teacher=run.teacher, steps=result.steps)

    def same_steps(self, run: JobRun, seed: int) -> Trained | None:
        """The fair control when the distillation took more optimizer steps than the same epochs on the labels."""
        if "student_distilled" not in run.rows:
            return None
        steps = run.rows["student_distilled"][-1]["steps"]
        if steps == run.rows["student_scratch"][-1]["steps"]:
            return None
        return self.hard_labels(run, seed, "student_hard_same_steps", max_steps=steps)

