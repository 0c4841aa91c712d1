"""The Python examples in docs/ run as written."""

from __future__ import annotations

import re

import keras
import pytest
from conftest import ROOT

DOCS_WITH_RUNNABLE_EXAMPLES = ["surgery.md"]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", DOCS_WITH_RUNNABLE_EXAMPLES)
def test_examples_run(doc, capsys):
    blocks = python_blocks(ROOT / "docs" / doc)
    assert blocks
    keras.backend.clear_session()  # auto-generated layer names restart, as in a fresh session
    keras.utils.set_random_seed(0)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/{doc} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is what matters
            pytest.fail(f"docs/{doc} block {i + 1} failed: {type(exc).__name__}: {exc}\n{code}")
    out = capsys.readouterr().out
    assert "block_13_project_BN block_14_add" in out
    assert "out_relu ['global_average_pooling2d', 'predictions']" in out
