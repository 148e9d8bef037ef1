"""CPU threads chosen for the work at hand: the setting checked, the cores other work leaves free, torch's own given back."""

import pytest
import torch
import yaml

import warmstart as ws
from warmstart import _threads
from warmstart.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_earlier_choice(monkeypatch):
    """Each test chooses afresh: no "auto" choice of an earlier test is reused."""
    monkeypatch.setattr(_threads, "_last", {})


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two", "Auto"])
def test_a_threads_setting_other_than_none_auto_or_a_count_is_refused(bad):
    with pytest.raises(ConfigError, match="threads'? must be"):
        ws.Trainer(torch.nn.Linear(2, 2), threads=bad)
    with pytest.raises(ConfigError, match="threads'? must be None.*'auto'"):
        ws.evaluate(torch.nn.Linear(2, 2), [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))], threads=bad)


@pytest.mark.parametrize(("cores", "others", "limit", "expected"),
                         [(2, 0.0, 2, 2), (2, 1.0, 2, 1), (2, 2.0, 2, 1), (8, 2.5, 8, 5), (8, 0.0, 3, 3), (4, None, 4, 4)])
def test_auto_takes_the_cores_other_work_leaves_free_within_the_users_limit(monkeypatch, cores, others, limit,
                                                                            expected):
    monkeypatch.setattr(_threads, "allowed_cores", lambda: cores)
    monkeypatch.setattr(_threads, "running_elsewhere", lambda: others)
    assert _threads.choose_threads(limit) == expected


def test_a_cgroup_quota_caps_the_allowed_cores(monkeypatch, tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 cores of quota
    monkeypatch.setattr(_threads, "_CGROUP", quota)
    assert _threads.allowed_cores() == min(2, len(__import__("os").sched_getaffinity(0)))
    quota.write_text("max 100000\n")
    assert _threads.allowed_cores() == len(__import__("os").sched_getaffinity(0))


def test_the_kernels_count_of_running_threads_leaves_this_one_out():
    others = _threads.running_elsewhere(samples=3, interval=0.0)
    assert others is None or others >= 0


def test_fit_and_evaluate_use_the_setting_record_it_and_give_torchs_back(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    seen = []

    class Spy(ws.Trainer):
        def training_step(self, batch):
            seen.append(torch.get_num_threads())
            return super().training_step(batch)

    data = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(2)]
    trainer = Spy(torch.nn.Linear(3, 2), threads=1, out_dir=str(tmp_path), progress=False, checkpoint=False)
    trainer.fit(data)
    assert set(seen) == {1} and torch.get_num_threads() == before
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["threads_used"] == 1
    monkeypatch.setattr(_threads, "running_elsewhere", lambda: 99.0)  # a machine other work fills: one thread
    inside = []
    monkeypatch.setattr(ws.evaluation, "average_metrics",
                        lambda *a, **k: inside.append(torch.get_num_threads()) or {"loss": 0.0})
    ws.evaluate(torch.nn.Linear(3, 2), data, threads="auto")
    assert inside == [1] and torch.get_num_threads() == before


def test_this_processs_own_spinning_threads_are_not_counted_as_other_work(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n")
    tasks = tmp_path / "task"
    for tid, state in ((1, "R"), (2, "R"), (3, "S")):  # two of ours run: the reader and a spinning OpenMP thread
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (python (x)) {state} 1 2 3\n")
    monkeypatch.setattr(_threads, "_STAT", stat)
    monkeypatch.setattr(_threads, "_TASKS", tasks)
    assert _threads.running_elsewhere(samples=1) == 1.0


def test_auto_is_the_default_and_an_evaluation_inside_the_fit_keeps_the_fits_count(tmp_path, monkeypatch):
    assert ws.TrainerConfig().threads == "auto"
    monkeypatch.setattr(_threads, "REUSE_SECONDS", 0.0)  # every call chooses anew
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls, seen = [], []
        monkeypatch.setattr(_threads, "allowed_cores", lambda: 2)
        monkeypatch.setattr(_threads, "running_elsewhere", lambda: calls.append(1) or 1.0)  # one core taken

        class Spy(ws.Trainer):
            def training_step(self, batch):
                seen.append(("train", torch.get_num_threads()))
                return super().training_step(batch)

            def validation_step(self, batch):
                seen.append(("val", torch.get_num_threads()))
                return super().validation_step(batch)

        data = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(2)]
        trainer = Spy(torch.nn.Linear(3, 2), max_epochs=2, out_dir=str(tmp_path), progress=False, checkpoint=False)
        trainer.fit(data, data)
        assert {count for _, count in seen} == {1} and {kind for kind, _ in seen} == {"train", "val"}
        assert len(calls) == 1  # chosen once, when the fit started: one run, one count
        assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trainer"]["threads_used"] == 1
        assert torch.get_num_threads() == 2
        ws.evaluate(torch.nn.Linear(3, 2), data)  # the function's default chooses too
        assert len(calls) == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(_threads, "running_elsewhere", lambda: 0.0)  # quiet: torch's own setting
        with _threads.cpu_threads("auto", torch.device("cpu")) as count:
            assert count == 2
        with _threads.cpu_threads(None, torch.device("cpu")) as count:  # off: torch's setting, nothing sampled
            assert count == 2
    finally:
        torch.set_num_threads(before)


def test_a_loop_of_small_evaluations_samples_the_load_once_a_second(monkeypatch):
    calls, clock = [], [100.0]
    monkeypatch.setattr(_threads, "running_elsewhere", lambda: calls.append(1) or 0.0)
    monkeypatch.setattr(_threads.time, "monotonic", lambda: clock[0])
    data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    for _ in range(20):
        ws.evaluate(torch.nn.Linear(3, 2), data)
    assert len(calls) == 1
    clock[0] += _threads.REUSE_SECONDS  # a second later the load is sampled again
    ws.evaluate(torch.nn.Linear(3, 2), data)
    assert len(calls) == 2
