"""fine_tune: the fixed recipe (linear-probe warm-up, then every layer) and the choice among candidates by validation."""

from __future__ import annotations

import pytest
import torch

import warmstart as ws
from warmstart.data import InMemoryLoader
from warmstart.errors import ConfigError, DataError
from warmstart.finetune import Candidate, Ensemble, Full, LinearProbe, fine_tune
from warmstart.models import small_cnn


def _batches(n: int = 6, classes: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (16,), generator=g)
        x = 0.5 * torch.randn(16, 1, 12, 12, generator=g) + y.view(-1, 1, 1, 1).float()  # brightness = class
        out.append((x, y))
    return out


def test_fine_tune_warms_up_the_head_then_trains_everything(tmp_path):
    torch.manual_seed(0)
    model = small_cnn(num_classes=10, width=4)
    backbone_before = model.block1[0].weight.clone()
    result = fine_tune(model, _batches(), _batches(seed=1), num_classes=3, epochs=4, freeze_epochs=2,
                       select=False, out_dir=tmp_path, progress=False)
    assert model.head.out_features == 3 and result.model is model
    assert [h["phase"] for h in result.history] == ["linear_probe"] * 2 + ["full"] * 4
    assert result.history[-1]["val_accuracy"] > 0.6
    assert not torch.equal(model.block1[0].weight, backbone_before)
    groups = {g["name"]: g["initial_lr"] for g in result.trainer.optimizer.param_groups}
    assert groups == pytest.approx({"head": 3e-3, "block3": 0.9 * 3e-3, "block2": 0.81 * 3e-3, "block1": 0.729 * 3e-3})
    assert (tmp_path / "probe" / "last.safetensors").exists() and (tmp_path / "full" / "last.safetensors").exists()


def test_the_candidate_with_the_best_validation_accuracy_is_trained_on_all_labels(tmp_path):
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, width=4)  # random "pretrained" features: the probe cannot win
    candidates = [Candidate("probe", 0, LinearProbe()), Candidate("everything", 0, Full(backbone_lr_mult=1.0))]
    result = fine_tune(model, _batches(), _batches(seed=1), epochs=4, candidates=candidates, out_dir=tmp_path,
                       progress=False, selection={"max_detectable": None})
    assert set(result.scores) == {"probe", "everything"}
    assert result.choice == max(result.scores, key=result.scores.get) == "everything"
    assert [h["phase"] for h in result.history] == ["full"] * 4  # the winner, trained for the full epochs
    assert result.model is model and (tmp_path / "full" / "last.safetensors").exists()


def test_when_training_from_random_weights_wins_it_is_said(recwarn):
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, width=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("head"):
                p.zero_()  # "pretrained" weights that carry nothing: every feature is 0
    candidates = [Candidate("full", 0, Full(backbone_lr_mult=1.0)),
                  Candidate("no_pretraining", 0, Full(backbone_lr_mult=1.0), pretrained=False)]
    with pytest.warns(UserWarning, match="training from random weights scored best.*do not help this task"):
        result = fine_tune(model, _batches(), _batches(seed=1), epochs=4, candidates=candidates, progress=False,
                           selection={"max_detectable": None})
    assert result.choice == "no_pretraining" and model.block1[0].weight.abs().sum() > 0


def test_without_a_val_loader_small_data_is_cross_validated_and_the_cost_reported():
    torch.manual_seed(0)
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    data = InMemoryLoader(x, y, batch_size=16, shuffle=True)
    result = fine_tune(small_cnn(num_classes=3, width=4), data, epochs=2, progress=False,
                       selection={"max_detectable": None})  # trials, though 96 labels tell little
    assert set(result.scores) == {"recipe", "full", "lora", "linear_probe", "no_pretraining"}
    assert all(0 <= s <= 1 for s in result.scores.values())
    picked = result.selection
    assert picked.validation == "5-fold x 1 cross-validation on 96 labels" and picked.default == "recipe"
    # trials of at least 50 optimizer steps: 10 epochs of the 5 batches of 76 or 77 training rows (batch 16)
    assert picked.trainings == 25 and picked.trial_epochs == 10 and all(len(s.folds) == 5 for s in picked.scores.values())
    assert picked.cost == pytest.approx(25 * 10 * (4 / 5) / 2)  # 2 epochs cannot be divided: 100x, and it says so
    assert picked.trial_steps == 50 and "(50 optimizer steps)" in picked.summary()
    assert result.scores == {n: s.mean for n, s in picked.scores.items()}
    assert result.choice == "recipe" and picked.scores["recipe"].mean == 1.0  # the task is learned in 50 steps
    with pytest.raises(DataError, match="a list cannot be split: pass a val_loader"):
        fine_tune(small_cnn(num_classes=3, width=4), _batches(), epochs=1, progress=False)


def test_on_labels_too_few_to_choose_on_no_trial_runs_and_the_default_is_trained():
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    with pytest.warns(UserWarning, match=r"With 96 validation labels no gain under 16 points could be told from "
                                         r"noise, so no trial ran and the default 'recipe' was trained"):
        result = fine_tune(small_cnn(num_classes=3, width=4), InMemoryLoader(x, y, batch_size=16, shuffle=True),
                           epochs=2, progress=False)
    assert result.choice == "recipe" and result.selection.trainings == 0 and result.selection.cost == 0
    assert result.members == ("recipe", "full")  # the hedge where no trial ran (its own test below)
    assert [h["phase"] for h in result.history] == ["linear_probe"] * 2 + ["full"] * 2 + ["second_full"] * 2


def _labelled(seed: int = 0) -> InMemoryLoader:
    x = torch.cat([b[0] for b in _batches(seed=seed)])
    y = torch.cat([b[1] for b in _batches(seed=seed)])
    return InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=seed)


def test_where_no_trial_can_run_the_recipe_and_the_full_fine_tune_are_averaged(tmp_path):
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, width=4)  # the task's head already (no new head: the reference starts alike)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="no trial ran"):
        result = fine_tune(model, _labelled(), _labelled(seed=1), epochs=3, out_dir=tmp_path, seed=5, progress=False)
    ensemble = result.model
    assert isinstance(ensemble, Ensemble) and result.members == ("recipe", "full") and result.choice == "recipe"
    first, second = ensemble.members
    assert first is model and second is not model
    assert [h["phase"] for h in result.history] == (["linear_probe"] * 2 + ["full"] * 3 + ["second_full"] * 3
                                                    + ["ensemble"])
    # the second member: the full fine-tune (every layer at the head's rate, no warm-up) from the same start, seed + 1
    reference = small_cnn(num_classes=3, width=4)
    reference.load_state_dict(start)
    fine_tune(reference, _labelled(), _labelled(seed=1), epochs=3, select=False, freeze_epochs=0, layer_decay=None,
              seed=6, progress=False)
    for name, value in reference.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name
    x, _ = _batches(seed=2)[0]
    ensemble.eval()
    with torch.no_grad():
        mean = (first(x).double().softmax(1) + second(x).double().softmax(1)) / 2
        assert torch.allclose(ensemble(x).double().softmax(1), mean, atol=1e-6)
    measured = ws.evaluate(ensemble, _labelled(seed=1))
    assert result.history[-1]["val_accuracy"] == pytest.approx(measured["accuracy"], abs=1e-6)
    for folder in ("probe", "full", "second/full"):
        assert (tmp_path / folder / "last.safetensors").exists()
    with pytest.raises(ws.errors.RunExistsError):  # a finished call's folder, second member included, is kept
        fine_tune(small_cnn(num_classes=3, width=4), _labelled(), _labelled(seed=1), epochs=3, out_dir=tmp_path,
                  progress=False)


def test_ensemble_false_trains_one_network_and_true_averages_the_choice_with_the_runner_up():
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, width=4)
    with pytest.warns(UserWarning, match="no trial ran"):
        result = fine_tune(model, _labelled(), epochs=2, ensemble=False, progress=False)
    assert result.model is model and result.members == ()
    candidates = [Candidate("probe", 0, LinearProbe()), Candidate("everything", 0, Full(backbone_lr_mult=1.0)),
                  Candidate("slow", 0, Full(backbone_lr_mult=0.1)),
                  Candidate("no_pretraining", 0, Full(backbone_lr_mult=1.0), pretrained=False)]
    torch.manual_seed(0)
    result = fine_tune(small_cnn(num_classes=3, width=4), _labelled(), _labelled(seed=1), epochs=4,
                       candidates=candidates, ensemble=True, progress=False, selection={"max_detectable": None})
    pretrained_others = {n: s for n, s in result.scores.items() if n not in (result.choice, "no_pretraining")}
    assert result.members == (result.choice, max(pretrained_others, key=pretrained_others.get))
    with pytest.raises(ConfigError, match=r"ensemble=True\) averages two pretrained candidates, but this call has 1 "
                                          r"\(recipe\)"):
        fine_tune(small_cnn(num_classes=3, width=4), _labelled(), epochs=1, select=False, ensemble=True,
                  progress=False)


def test_the_default_epochs_take_at_least_100_optimizer_steps():
    from warmstart.finetune.recipes import default_epochs

    assert default_epochs([0] * 4) == 25 and default_epochs([0] * 40) == 10 and default_epochs(iter([])) == 10


def test_bad_recipe_arguments_are_named():
    with pytest.raises(ConfigError, match="inside optimizer=..., or lr=/weight_decay= without optimizer"):
        fine_tune(small_cnn(width=4), _batches(), optimizer={"name": "sgd"}, lr=0.1, progress=False)
    with pytest.raises(ConfigError, match="keep_head=True, but the head has 10 outputs and the task 3 classes"):
        fine_tune(small_cnn(width=4), _batches(), num_classes=3, keep_head=True, progress=False)


def test_a_new_task_gets_a_new_head_even_with_the_same_class_count():
    torch.manual_seed(0)
    model = small_cnn(num_classes=3, width=4)
    old_head = model.head.weight.detach().clone()
    fine_tune(model, _batches(), num_classes=3, epochs=1, select=False, freeze_epochs=0, progress=False)
    assert not torch.allclose(model.head.weight, old_head, atol=0.05)  # replaced (N(0, 0.01)), then trained
    kept = small_cnn(num_classes=3, width=4)
    before = kept.head
    fine_tune(kept, _batches(), num_classes=3, keep_head=True, epochs=1, select=False, freeze_epochs=0, progress=False)
    assert kept.head is before


def test_wise_ft_interpolates_between_the_start_of_the_main_phase_and_the_fine_tuned_weights(tmp_path):
    import copy

    torch.manual_seed(0)
    start = small_cnn(num_classes=3, width=4)
    tuned, wise = copy.deepcopy(start), copy.deepcopy(start)
    options = {"num_classes": 3, "epochs": 2, "select": False, "freeze_epochs": 0, "progress": False, "seed": 0}
    torch.manual_seed(1)
    fine_tune(tuned, _batches(), **options)
    torch.manual_seed(1)
    swapped = copy.deepcopy(start)
    from warmstart.heads import swap_head

    swap_head(swapped, 3)  # w_start: the pretrained backbone and the new head, as the main phase begins
    torch.manual_seed(1)
    result = fine_tune(wise, _batches(), wise=0.25, out_dir=tmp_path, **options)
    for (name, w), t, s in zip(wise.state_dict().items(), tuned.state_dict().values(), swapped.state_dict().values()):
        if w.is_floating_point():
            torch.testing.assert_close(w, 0.75 * s + 0.25 * t, msg=name)
    assert result.history[-1]["phase"] == "wise" and result.history[-1]["wise"] == 0.25
    saved = ws.load_weights(tmp_path / "full" / "last.safetensors")
    assert saved[1]["wise"] == 0.25 and torch.equal(saved[0]["head.weight"], wise.head.weight.detach())
    with pytest.raises(ConfigError, match="wise is the share .* in \\(0, 1\\], got 1.5"):
        fine_tune(small_cnn(num_classes=3, width=4), _batches(), wise=1.5, progress=False)


def test_the_default_learning_rate_fits_the_network_and_lora_trains_at_least_at_1e_3():
    from warmstart.finetune.recipes import default_candidates, default_lr

    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    assert default_lr(transformers.BertForSequenceClassification(config)) == 1e-4  # 3e-3 collapsed MiniLM to chance
    assert default_lr(small_cnn(width=4)) == 3e-3
    assert default_lr(torch.nn.TransformerEncoderLayer(8, 2)) == 1e-4
    lora = {c.name: c for c in default_candidates(lr=1e-4)}["lora"].method
    assert lora.backbone_lr_mult == pytest.approx(10.0)  # adapters at 1e-3
    assert {c.name: c for c in default_candidates(lr=3e-3)}["lora"].method.backbone_lr_mult == 1.0
