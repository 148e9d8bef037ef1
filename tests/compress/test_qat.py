"""Quantization-aware training on real digits: fake int8 trains, converts to int8 close to what it trained, refusals."""

from __future__ import annotations

import copy
import platform

import pytest
import torch

from warmstart.compress import (
    CompiledInt8Model,
    QATModel,
    convert_qat,
    load_compressed,
    prepare_qat,
    quantize,
    recover,
    save_compressed,
)
from warmstart.data import InMemoryLoader
from warmstart.errors import ConfigError
from warmstart.models import mlp
from warmstart.pretrain import save_pretrained

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the X86InductorQuantizer needs x86")


def accuracy(model, x, y) -> float:
    """Accuracy over whole batches of 64 (the compiled int8 graph compiles once per batch shape)."""
    model.eval()
    n = len(y) // 64 * 64
    with torch.no_grad():
        return float(torch.cat([model(chunk).argmax(1) for chunk in x[:n].split(64)]).eq(y[:n]).float().mean())


@pytest.fixture(scope="module")
def digits_mlp(digits_cnn):
    """mlp(64, [128], 10) trained 10 epochs on the 899 8x8 UCI training digits, with dropout (a train/eval switch)."""
    import warmstart as ws

    data = digits_cnn["data"]
    torch.manual_seed(0)
    model = mlp(64, [128], 10, dropout=0.2)
    ws.Trainer(model, {"name": "adamw", "lr": 3e-3}, scheduler={"name": "cosine"}, max_epochs=10, progress=False,
               seed=0).fit(InMemoryLoader(data.train, batch_size=64, shuffle=True))
    return model.eval(), data


def test_qat_trains_fake_int8_and_converts_to_the_int8_it_trained(digits_mlp, tmp_path):
    model, data = digits_mlp
    x = data.train.tensors[0]
    x_test, y_test = data.test.tensors
    before = copy.deepcopy(model.state_dict())
    qat = prepare_qat(model, x[:64])
    assert isinstance(qat, QATModel) and qat.training
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    float_accuracy = accuracy(model, x_test, y_test)
    with torch.no_grad():  # train mode runs dropout, eval mode does not: the graph's mode follows train()/eval()
        qat.train()
        assert not torch.equal(qat(x[:64]), qat(x[:64]))
        qat.eval()
        assert torch.equal(qat(x[:64]), qat(x[:64]))
        # int8 rounding of weights and activations: within 5% of the largest logit (measured ~1%)
        assert (qat(x[:64]) - model(x[:64])).abs().max() <= 0.05 * model(x[:64]).abs().max()
    # the switch keeps the model's dropout probability (torchao's move_exported_model_to_eval writes 0.5 over it)
    assert [n.args[1:] for n in qat.graph.graph.nodes if "dropout" in str(n.target)] == [(0.2, False)]

    weight = next(qat.parameters()).clone()
    recover(qat, InMemoryLoader(data.train, batch_size=64, shuffle=True), teacher=model, epochs=2, progress=False,
            seed=0, optimizer={"name": "adamw", "lr": 1e-3})
    assert not torch.equal(next(qat.parameters()), weight)
    fake_accuracy = accuracy(qat, x_test, y_test)
    # measured: float 95.7%, fake int8 after 2 epochs of QAT with distillation 95.0-96.0%
    assert fake_accuracy >= float_accuracy - 0.02

    fresh = prepare_qat(model, x[:64])  # a training state (weights, observers, scales) loads into a fresh copy
    fresh.load_state_dict(qat.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x[:64]), qat(x[:64]))

    qat.train()
    int8, report = convert_qat(qat, repeats=2)
    assert isinstance(int8, CompiledInt8Model) and qat.training  # qat can go on training
    with torch.no_grad():
        qat.eval()
        reference, output = qat(x[:64]), int8(x[:64])
    # the int8 kernels reproduce the fake-quantized model within a few int8 steps (measured ~0.5% of the logits)
    assert report.max_abs_error == pytest.approx(float((output - reference).abs().max()))
    assert report.max_abs_error <= 0.03 * reference.abs().max()
    assert abs(accuracy(int8, x_test, y_test) - fake_accuracy) <= 0.01
    assert int8(x[:5]).shape == (5, 10)
    assert report.mode == "int8-static" and report.layers == ["fc1.0", "head"]
    # a float scale and zero point per output channel weigh on a model this small: 3.3x (3.96x for the bench's MLP)
    assert report.bytes_after < report.bytes_before / 3
    assert set(report.latency_ms) == {"qat (fake int8)", "int8-static"}
    path = save_compressed(int8, tmp_path / "int8.safetensors")  # through its torch.export program
    with torch.no_grad():
        assert torch.equal(load_compressed(path, model)(x[:64]), output)


def test_qat_refusals(digits_mlp, tmp_path):
    model, data = digits_mlp
    x = data.train.tensors[0]
    with pytest.raises(ConfigError, match="example batch of at least 2 samples"):
        prepare_qat(model, x[:1])
    with pytest.raises(ConfigError, match="takes the QATModel that prepare_qat returned.*int8-static"):
        convert_qat(model)
    qat = prepare_qat(model, x[:8])
    with pytest.raises(ConfigError, match="convert it with warmstart.compress.convert_qat"):
        quantize(qat, "int8-weight", x[:8])
    with pytest.raises(ConfigError, match="QATModel is an exported training graph.*Trainer checkpoints"):
        save_compressed(qat, tmp_path / "qat.safetensors")
    with pytest.raises(ConfigError, match="fake-quantized by warmstart.compress"):
        save_pretrained(qat, tmp_path / "qat.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # torchao folds conv + BatchNorm by pattern matching: ~40 s per conversion on this CPU
def test_qat_of_a_cnn_folds_batchnorm_and_converts(digits_cnn):
    model, data = digits_cnn["model"], digits_cnn["data"]
    x, y = data.test.tensors
    qat = prepare_qat(model, data.train.tensors[0][:64])
    recover(qat, InMemoryLoader(data.train, batch_size=64, shuffle=True), teacher=model, epochs=2, progress=False,
            seed=0)
    int8, report = convert_qat(qat, repeats=2)
    assert report.layers == ["block1.0", "block2.0", "block3.0", "head"]
    # measured: float 95.3%, int8 after QAT 94.8%
    assert accuracy(int8, x, y) >= digits_cnn["accuracy"] - 0.02


def test_a_qat_run_resumes_from_its_trainer_checkpoint(digits_mlp, tmp_path):
    import warmstart as ws

    model, data = digits_mlp
    base = prepare_qat(model, data.train.tensors[0][:64])  # deep copies below stand for fresh prepare_qat copies
    train = InMemoryLoader(data.train, batch_size=64, shuffle=True, seed=0)

    def trainer(qat, folder, epochs):
        return ws.Trainer(qat, {"name": "adamw", "lr": 1e-3}, max_epochs=epochs, progress=False, seed=0,
                          out_dir=folder)

    straight = trainer(copy.deepcopy(base), tmp_path / "a", 2)
    straight.fit(train)
    trainer(copy.deepcopy(base), tmp_path / "b", 1).fit(train)
    resumed = trainer(copy.deepcopy(base), tmp_path / "b", 2)
    resumed.fit(train, resume="last")
    # weights, observer ranges, scales and zero points: the same as the uninterrupted run
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
