"""The proximal objective: the penalty, both modes against the closed-form minimiser, limits, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import make_dataset, make_mlp
from torch import nn
from torch.utils.data import DataLoader

import warmstart as ws
from warmstart.errors import ConfigError
from warmstart.pretrain import Anchor, ProximalTrainer, proximal_penalty


def _half_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """f = 1/2 (x.w - y)^2, averaged over the batch."""
    return 0.5 * ((output.squeeze(1) - target) ** 2).mean()


def _regression(n: int = 40, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    w0 = torch.randn(d, generator=g, dtype=torch.float64)
    return x, y, w0


def _closed_form(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lam: float) -> torch.Tensor:
    """The minimiser of J: (I + (lam/n) X^T X) w* = w0 + (lam/n) X^T y."""
    n, d = x.shape
    return torch.linalg.solve(torch.eye(d, dtype=x.dtype) + lam / n * x.T @ x, w0 + lam / n * x.T @ y)


def _fit_linear(x, y, w0, lam, mode, optimizer, steps, scheduler=None) -> torch.Tensor:
    model = nn.Linear(x.shape[1], 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w0.unsqueeze(0))
    trainer = ProximalTrainer(model, optimizer(model), lam=lam, loss_fn=_half_squared_error, mode=mode,
                              scheduler=scheduler, device="cpu", progress=False)
    trainer.fit([(x, y)] * steps)  # full batch: the batch mean is the mean over all n examples
    return model.weight.detach().squeeze(0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_penalty_matches_a_float64_reference():
    model = make_mlp().double()
    anchor = Anchor({k: v + 0.1 * torch.randn_like(v) for k, v in model.named_parameters()})
    expected = 0.5 * sum(((p - anchor.tensors[k]) ** 2).sum() for k, p in model.named_parameters())
    torch.testing.assert_close(proximal_penalty(model, anchor), expected)


@pytest.mark.parametrize("mode", ["penalty", "prox"])
def test_sgd_converges_to_the_closed_form_minimiser(mode):
    x, y, w0 = _regression()
    lam = 5.0
    expected = _closed_form(x, y, w0, lam)
    lipschitz = 1 + lam / len(x) * torch.linalg.eigvalsh(x.T @ x).max().item()
    w = _fit_linear(x, y, w0, lam, mode, lambda m: torch.optim.SGD(m.parameters(), lr=1 / lipschitz, momentum=0.5), 400)
    assert _rel(w, expected) < 1e-4
    assert _rel(w0, expected) > 0.1  # the minimiser is far from both w0 ...
    assert _rel(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1), expected) > 0.01  # ... and plain least squares


@pytest.mark.parametrize("mode", ["penalty", "prox"])
def test_adam_converges_to_the_closed_form_minimiser(mode):
    x, y, w0 = _regression(seed=1)
    lam = 5.0
    expected = _closed_form(x, y, w0, lam)
    w = _fit_linear(x, y, w0, lam, mode, lambda m: torch.optim.Adam(m.parameters(), lr=0.05), 3000,
                    scheduler={"name": "cosine"})
    assert _rel(w, expected) < 1e-4


@pytest.mark.parametrize("mode", ["penalty", "prox"])
def test_vanishing_lam_keeps_w0_and_huge_lam_is_plain_training(mode):
    x, y, w0 = _regression()
    w = _fit_linear(x, y, w0, 1e-12, mode, lambda m: torch.optim.SGD(m.parameters(), lr=0.5), 50)
    assert (w - w0).abs().max() < 1e-10
    lam = 1e7
    least_squares = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    lipschitz = lam / len(x) * torch.linalg.eigvalsh(x.T @ x).max().item()
    w = _fit_linear(x, y, w0, lam, mode, lambda m: torch.optim.SGD(m.parameters(), lr=1 / lipschitz, momentum=0.5), 400)
    assert _rel(w, least_squares) < 1e-4


def test_huge_lam_with_scaled_lr_follows_the_plain_trajectory():
    torch.manual_seed(0)
    base = make_mlp().double()
    data = make_dataset()
    loader = [(x.double(), y) for x, y in DataLoader(data, batch_size=16)]
    plain, prox = make_mlp().double(), make_mlp().double()
    plain.load_state_dict(base.state_dict())
    prox.load_state_dict(base.state_dict())
    ws.Trainer(plain, torch.optim.SGD(plain.parameters(), lr=0.1), max_epochs=3, progress=False).fit(loader)
    lam = 1e8
    ProximalTrainer(prox, torch.optim.SGD(prox.parameters(), lr=0.1 / lam), lam=lam, max_epochs=3,
                    progress=False).fit(loader)
    for a, b in zip(plain.parameters(), prox.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_one_step_follows_w_minus_w0_plus_lam_grad_with_group_lams_and_beta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    anchor = Anchor({k: v + 0.3 for k, v in model.named_parameters() if k.startswith("0.")})
    loss = nn.functional.cross_entropy(model(x), y)
    grads = dict(zip([k for k, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    lams = {"0.weight": 2.0, "0.bias": 2.0, "1.weight": 7.0, "1.bias": 7.0}
    beta = 0.25
    expected = {k: before[k] - 0.1 * (lams[k] * grads[k] + (before[k] - anchor.tensors[k] if k in anchor.tensors
                                                            else beta * before[k])) for k in before}
    optimizer = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lam": 7.0}],
                                lr=0.1)
    ProximalTrainer(model, optimizer, lam=2.0, anchor=anchor, beta=beta, progress=False).fit([(x, y)])
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k])


def test_no_second_model_no_extra_forward_and_one_stored_anchor():
    model = make_mlp()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    trainer = ProximalTrainer(model, lam=10.0, max_epochs=1, progress=False)
    trainer.fit(DataLoader(make_dataset(), batch_size=16))
    assert len(calls) == 4  # one forward per step
    params = dict(model.named_parameters())
    assert set(trainer.anchor.tensors) == set(params)
    for name, w0 in trainer.anchor.tensors.items():
        assert not w0.requires_grad and w0.data_ptr() != params[name].data_ptr()


def test_anchor_is_saved_so_resume_is_exact(tmp_path):
    def run(out_dir, stop_after=None, resume=None):
        torch.manual_seed(0)
        model = make_mlp(dropout=0.2)
        callbacks = []
        if stop_after:
            class Stop(ws.Callback):
                def on_epoch_end(self, trainer, metrics):
                    trainer.should_stop = trainer.epoch + 1 == stop_after
            callbacks.append(Stop())
        trainer = ProximalTrainer(model, {"name": "adam", "lr": 0.01}, lam=3.0, mode="prox", max_epochs=4,
                                  out_dir=str(out_dir), callbacks=callbacks, progress=False)
        trainer.fit(DataLoader(make_dataset(), batch_size=16, shuffle=True), resume=resume)
        return trainer

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    resumed = run(tmp_path / "b", resume="last")
    for a, b in zip(straight.unwrapped_model.parameters(), resumed.unwrapped_model.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(straight.anchor.tensors[k], resumed.anchor.tensors[k]) for k in straight.anchor.tensors)
    assert "proximal_penalty" in straight.history[-1]


@pytest.mark.parametrize("lam", [0, -1.0, float("nan"), float("inf")])
def test_bad_lam_is_refused(lam):
    with pytest.raises(ConfigError, match="lam must be a positive finite number"):
        ProximalTrainer(make_mlp(), lam=lam)


def test_anchor_mismatch_lists_names_and_shapes():
    model = make_mlp()
    anchor = {"0.weight": torch.zeros(5, 5), "encoder.weight": torch.zeros(3)}
    with pytest.raises(ConfigError, match=r"not parameters of the model: encoder.weight; shape mismatches: 0.weight: "
                                          r"anchor \(5, 5\) vs model \(16, 10\)"):
        ProximalTrainer(make_mlp(), lam=1.0, anchor=anchor)
    with pytest.raises(ConfigError, match="unknown proximal mode 'exact'"):
        ProximalTrainer(model, lam=1.0, anchor=Anchor.from_model(model), mode="exact")
    trainer = ProximalTrainer(model, {"name": "rmsprop"}, lam=1.0, mode="prox", progress=False)
    with pytest.raises(ConfigError, match="mode='prox' has a closed-form step for SGD, Adam and AdamW, not RMSprop"):
        trainer.fit(DataLoader(make_dataset(), batch_size=16))


def test_weight_decay_on_anchored_parameters_warns():
    model = make_mlp()
    trainer = ProximalTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4), lam=1.0,
                              progress=False)
    with pytest.warns(UserWarning, match="weight_decay=0.0001 pulls anchored parameters .* toward zero"):
        trainer.fit(DataLoader(make_dataset(), batch_size=16))


def test_anchor_from_a_weight_file_keeps_only_parameters(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ws.save_weights(tmp_path / "w.safetensors", model.state_dict())
    anchor = Anchor.from_weights(tmp_path / "w.safetensors", model)
    assert set(anchor.tensors) == {"0.weight", "0.bias", "1.weight", "1.bias"}  # no running statistics
    trainer = ProximalTrainer(model, lam=1.0, anchor=str(tmp_path / "w.safetensors"), progress=False)
    assert set(trainer.anchor.tensors) == set(anchor.tensors)


def test_optimizers_by_name_give_anchored_weights_no_decay():
    """The documented objective: weight decay on an anchored weight would pull it toward 0 as well as w0."""
    from warmstart.finetune import FinetuneTrainer

    model = make_mlp()
    trainer = ProximalTrainer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}, lam=1.0, progress=False)
    anchored = {id(p) for p in model.parameters()}
    for group in trainer.optimizer.param_groups:
        assert group["weight_decay"] == 0 or not anchored & {id(p) for p in group["params"]}
    finetuned = ws.models.small_cnn(num_classes=4, width=4)
    trainer = FinetuneTrainer(finetuned, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}, proximal=1.0,
                              method="full", progress=False)
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    anchored = {id(p) for name, p in finetuned.named_parameters() if not name.startswith("head.")}
    assert anchored and all(decay[i] == 0 for i in anchored)  # the pretrained weights: the term's w0
    assert decay[id(finetuned.head.weight)] == 0.01  # the new head is not anchored: it keeps its decay
