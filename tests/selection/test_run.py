"""Training by selection end to end: the run folder claimed first, trials in memory, the record, and resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import warmstart as ws
from warmstart.data import InMemoryLoader
from warmstart.distill import KDSetting, distill
from warmstart.errors import CheckpointError, ConfigError, RunExistsError
from warmstart.finetune import Candidate, Full, LinearProbe, fine_tune
from warmstart.models import mlp, small_cnn
from warmstart.selection import read_selection

CANDIDATES = [Candidate("full", 0, Full(backbone_lr_mult=1.0)), Candidate("probe", 0, LinearProbe())]
TRIALS = {"max_detectable": None, "min_trial_steps": 1}  # trials on these few labels, though they cannot tell much


def _images(n: int = 60, seed: int = 0) -> InMemoryLoader:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 * torch.randn(n, 1, 12, 12, generator=g) + y.view(-1, 1, 1, 1).float()
    return InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=0)


class Killed(Exception):
    """What :class:`KillAt` raises: the process dies."""


class KillAt(ws.Callback):
    """Count the trainings started (trials and final phases); raise :class:`Killed` when the ``at``-th starts."""

    def __init__(self, at: int | None = None):
        self.at, self.started = at, 0

    def on_fit_start(self, trainer):
        self.started += 1
        if self.started == self.at:
            raise Killed


def _fine_tune(out_dir, callback: KillAt, **options):
    torch.manual_seed(0)
    return fine_tune(small_cnn(num_classes=3, width=4), _images(), epochs=2, candidates=CANDIDATES, out_dir=out_dir,
                     callbacks=[callback], progress=False, seed=0, selection=TRIALS, **options)


def test_a_killed_fine_tune_resumes_without_repeating_its_finished_trials(tmp_path):
    whole = _fine_tune(tmp_path / "whole", counter := KillAt())
    assert counter.started == 10 + 1  # 2 candidates x 5 folds, then the choice
    assert {p.name for p in (tmp_path / "whole").iterdir()} <= {"full", "probe", "selection.json"}
    rows = (tmp_path / "whole" / "full" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # the final run's epochs only: no trial wrote into out_dir
    with pytest.raises(Killed):
        _fine_tune(tmp_path / "cut", KillAt(at=7))  # 6 trials finished and recorded
    assert len(json.loads((tmp_path / "cut" / "selection.json").read_text())["trials"]) == 6
    with pytest.raises(RunExistsError, match=r'continue it with fine_tune\(\.\.\., resume="last"\)'):
        _fine_tune(tmp_path / "cut", refused := KillAt())
    assert refused.started == 0  # refused before any trial
    resumed = _fine_tune(tmp_path / "cut", again := KillAt(), resume="last")
    assert again.started == 4 + 1  # the 4 trials left, then the choice
    assert resumed.selection == whole.selection == read_selection(tmp_path / "cut")
    for key, value in load_file(tmp_path / "whole" / "full" / "last.safetensors").items():
        assert torch.equal(load_file(tmp_path / "cut" / "full" / "last.safetensors")[key], value), key


def test_a_resume_of_another_plan_or_a_damaged_record_is_refused(tmp_path):
    _fine_tune(tmp_path, KillAt())
    with pytest.raises(ConfigError, match=r"planned otherwise \(candidates: \['full', 'probe'\] recorded, \['full'\] now"):
        torch.manual_seed(0)
        fine_tune(small_cnn(num_classes=3, width=4), _images(), epochs=2, candidates=CANDIDATES[:1], out_dir=tmp_path,
                  resume="last", progress=False, selection=TRIALS)
    with pytest.raises(ConfigError, match="seed: 0 recorded, 1 now"):
        fine_tune(small_cnn(num_classes=3, width=4), _images(), epochs=2, candidates=CANDIDATES, out_dir=tmp_path,
                  resume="last", progress=False, seed=1, selection=TRIALS)
    (tmp_path / "selection.json").write_text('{"format": "warmstart-selection-2", "plan"')
    with pytest.raises(CheckpointError, match="selection.json' is damaged"):
        _fine_tune(tmp_path, KillAt(), resume="last")
    with pytest.raises(ConfigError, match="resume=None or resume='last'.*got True"):
        _fine_tune(tmp_path, KillAt(), resume=True)


def test_max_epochs_is_the_same_as_epochs_and_both_are_refused():
    data = _images(30)
    result = fine_tune(small_cnn(num_classes=3, width=4), data, select=False, freeze_epochs=0, max_epochs=2,
                       progress=False)
    assert len(result.history) == 2
    with pytest.raises(ConfigError, match="both epochs=2 and max_epochs=3"):
        fine_tune(small_cnn(num_classes=3, width=4), data, epochs=2, max_epochs=3, progress=False)
    with pytest.raises(ConfigError, match="both epochs=2 and max_epochs=3"):
        distill(mlp(144, [4], 3), mlp(144, [4], 3), data, epochs=2, max_epochs=3, progress=False)
    with pytest.raises(ConfigError, match="epochs must be a whole number >= 1, got 0"):
        fine_tune(small_cnn(num_classes=3, width=4), data, epochs=0, progress=False)


def test_distill_trials_never_write_into_out_dir_and_the_final_student_is_saved(tmp_path):
    teacher, data = small_cnn(num_classes=3, width=4), _images()
    settings = [KDSetting("hard", 0.0), KDSetting("kd", 0.9)]
    for overwrite in (False, True):  # issue 36, 4: the second trial refused the first's folder; overwrite kept a trial
        torch.manual_seed(0)
        student = small_cnn(num_classes=3, width=4)
        result = distill(student, teacher, data, epochs=2, settings=settings, out_dir=tmp_path, overwrite=overwrite,
                         progress=False, seed=0, selection=TRIALS)
        saved = load_file(tmp_path / "last.safetensors")
        assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())
        assert result.selection.trainings == 10 and len(result.history) == 2
        assert read_selection(tmp_path) == result.selection


def test_fine_tune_scores_every_fold_through_the_loaders_input_transform():
    """Issue 36, 1: validation folds dropped the transform: a 3-channel network crashed on 1-channel folds."""
    from warmstart.efficientnet import efficientnet_lite_input

    data = _images()
    pixels = (data.inputs - data.inputs.min()) / (data.inputs.max() - data.inputs.min())  # in [0, 1], as ImageInput takes
    loader = InMemoryLoader(pixels, data.targets, batch_size=8, shuffle=True, seed=0,
                            transform=efficientnet_lite_input(0, size=16))
    torch.manual_seed(0)
    result = fine_tune(small_cnn(num_classes=3, in_channels=3, width=4), loader, epochs=10, lr=1e-2,
                       candidates=CANDIDATES, progress=False, seed=0, selection=TRIALS)
    assert min(result.selection.scores["full"].folds) > 0.5  # every fold scored above chance (1/3), none crashed


def test_what_a_choice_cannot_take_is_named_in_one_line():
    """Issue 37: regression targets gave 'too few to choose on' or KeyError: 'accuracy'; folds=2.5 or '3' and
    float targets to distill gave deep errors; unlabelled images of another width failed inside the teacher."""
    data = _images(30)
    regression = InMemoryLoader(data.inputs, torch.randn(30), batch_size=8)
    with pytest.raises(ws.DataError, match=r"needs class labels, but the targets are torch.float32 .*regression"):
        fine_tune(small_cnn(num_classes=1, width=4), regression, epochs=1, progress=False)
    for folds in (2.5, "3"):
        with pytest.raises(ConfigError, match=rf"'selection.folds' must be int, got {type(folds).__name__}"):
            fine_tune(small_cnn(num_classes=3, width=4), data, epochs=1, folds=folds, progress=False)
    floats = InMemoryLoader(data.inputs, data.targets.float(), batch_size=8)
    with pytest.raises(ConfigError, match=r"distill\(\) takes class labels \(integers\), got torch.float32"):
        distill(small_cnn(num_classes=3, width=4), small_cnn(num_classes=3, width=4), floats, progress=False)
    with pytest.raises(ConfigError, match=r"unlabelled inputs have shape \(1, 8, 8\).*\(1, 12, 12\)"):
        distill(small_cnn(num_classes=3, width=4), small_cnn(num_classes=3, width=4), data,
                unlabelled=torch.rand(10, 1, 8, 8), progress=False)


def test_soft_targets_are_chosen_on_by_their_most_probable_class():
    data = _images(40)
    soft = 0.8 * torch.nn.functional.one_hot(data.targets, 3).float() + 0.2 / 3
    torch.manual_seed(0)
    result = fine_tune(small_cnn(num_classes=3, width=4), InMemoryLoader(data.inputs, soft, batch_size=8, shuffle=True),
                       epochs=4, lr=1e-2, candidates=CANDIDATES, progress=False, seed=0, selection=TRIALS)
    assert sum(result.selection.scores["full"].counts) == 40 and result.selection.scores["full"].mean > 0.5
