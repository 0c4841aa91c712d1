"""Shared fixtures: the model zoo (tests/zoo.py) and numeric comparison helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = ROOT.parent / "shared"


def random_inputs(model, batch: int = 2, seed: int = 0):
    """Random inputs for every model input, in 0..255 like raw pixels."""
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(0, 255, size=(batch, *t.shape[1:])).astype("float32") for t in model.inputs]
    return xs if len(xs) > 1 else xs[0]


def to_numpy(x) -> np.ndarray:
    """A backend tensor (a torch tensor that requires grad, a jax array, ...) as a NumPy array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def outputs_of(model, x, training: bool = False) -> list[np.ndarray]:
    out = model(x, training=training)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [to_numpy(o) for o in out]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent (the shared data/models folder beside the project)")
    return SHARED


def cli_in_process(*args: str, cwd=None):
    """`python cli.py ARGS` run in this process through `cli.main`, in `cwd`, with stdout and stderr
    captured: a `subprocess.CompletedProcess` like a child's, without paying TensorFlow's import
    again. Tests that are about the process itself (a hang, a signal) use a child instead."""
    import contextlib
    import io
    import subprocess

    import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
