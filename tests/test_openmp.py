"""The CLI's OpenMP settings: set before torch loads, unless the user set them."""

import os
import subprocess
import sys

import pytest

from warmstart._openmp import hold_up_under_load

PROBE = ("import os, sys; from warmstart.cli import main; main(['pretrain', '--print-config']); "
         "assert 'torch' not in sys.modules; print(os.environ.get('GOMP_SPINCOUNT'))")  # set before torch loads


def _cli_env(**changes: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | changes
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("changes", "expected"), [({}, "10000"), ({"GOMP_SPINCOUNT": "infinite"}, "infinite"),
                                                   ({"OMP_WAIT_POLICY": "active"}, "None")])
def test_the_cli_sets_the_spin_count_before_torch_loads_unless_the_user_chose(changes, expected):
    assert _cli_env(**changes) == expected


def test_once_torch_is_loaded_nothing_is_set(monkeypatch):
    import torch  # noqa: F401  (OpenMP has read its settings: changing them now would say what is not so)

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert hold_up_under_load() is None and "GOMP_SPINCOUNT" not in os.environ
