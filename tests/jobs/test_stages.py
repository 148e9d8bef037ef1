"""The stage runners: a value the user set in a config is the value the stage uses."""

import pytest
import torch

from warmstart.jobs import stages
from warmstart.config import OptimizerConfig, TrainerConfig
from warmstart.config import ModelConfig
from warmstart.data import DataConfig
from warmstart.jobs.schema import FinetuneJob

DATA = DataConfig(name="fake", fake_size=48, fake_classes=3, batch_size=16, val_per_class=2)


@pytest.mark.parametrize("smoothing, expected", [(0.0, 0.0), (None, 0.1), (0.2, 0.2)])
def test_the_recipe_stage_uses_the_configured_label_smoothing_and_optimizer(monkeypatch, smoothing, expected):
    seen = []

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result.trainer)
        return result

    real = stages.fine_tune
    monkeypatch.setattr(stages, "fine_tune", spy)
    job = FinetuneJob(data=DATA, model=ModelConfig(args={"width": 4}), method="recipe",
                      method_args={"select": False}, label_smoothing=smoothing,
                      optimizer=OptimizerConfig(name="sgd", lr=0.05, weight_decay=0.0),
                      trainer=TrainerConfig(max_epochs=1, seed=0, progress=False, out_dir=None))
    stages.run_finetune(job)
    (trainer,) = seen
    assert trainer.loss_fn.keywords["label_smoothing"] == expected  # 0.0 stays 0.0 (it once became 0.1)
    assert isinstance(trainer.optimizer, torch.optim.SGD)  # the configured name, not a rebuilt AdamW


def test_the_finetune_job_keeps_one_network_and_refuses_an_ensemble_by_name():
    from warmstart.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method_args.ensemble: the finetune job saves one fine-tuned network"):
        FinetuneJob(data=DATA, method="recipe", method_args={"ensemble": True})


def test_a_distill_job_is_checked_before_its_teacher_is_built(tmp_path, monkeypatch):
    """Issue 23: the student's arguments and the transfer set were checked after the teacher was loaded and measured."""
    from warmstart.checkpoint import save_weights
    from warmstart.errors import ConfigError
    from warmstart.jobs.schema import DistillJob

    data = stages.build_data(DATA, 0)
    weights = save_weights(tmp_path / "teacher.safetensors",
                           stages.build_job_model(ModelConfig(args={"width": 4}), data).state_dict())
    monkeypatch.setattr(stages, "evaluate", lambda *args, **kwargs: pytest.fail("the teacher was measured"))
    trainer = TrainerConfig(max_epochs=1, progress=False, out_dir=None)
    with pytest.raises(ConfigError, match="student.args.width=-4: a size of model 'small_cnn' cannot be negative"):
        stages.run_distill(DistillJob(teacher=ModelConfig(args={"width": 4}), teacher_weights=str(weights), data=DATA,
                                      student=ModelConfig(args={"width": -4}), trainer=trainer))
    with pytest.raises(ConfigError, match="'views' caches augmented views: it needs .* data.augment"):
        stages.run_distill(DistillJob(teacher=ModelConfig(args={"width": 4}), teacher_weights=str(weights), data=DATA,
                                      trainer=trainer, cache_teacher=True, views=2))
    with pytest.raises(ConfigError, match="optimizer: unknown optimizer 'adamx'"):
        stages.run_distill(DistillJob(teacher=ModelConfig(args={"width": 4}), teacher_weights=str(weights), data=DATA,
                                      trainer=trainer, optimizer=OptimizerConfig(name="adamx")))
