"""Import TensorFlow without its start-up chatter on stderr.

TensorFlow 2.18+ logs through absl before `TF_CPP_MIN_LOG_LEVEL` is honoured, so every CLI run would
start with "oneDNN custom operations are on" and CPU-feature lines. The CLI promises one clear line on
bad input, so it imports TensorFlow with file descriptor 2 pointed at a temporary file, drops the
known informational lines, and replays anything else (or everything, if the import fails).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile

_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|I\d{4} [\d:.]+\s+\d+ \S+\] "
    r"|To enable the following instructions:)"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (when it is the Keras backend and installed) with its info lines dropped."""
    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", "replace").splitlines()
            keep = lines if failed else [ln for ln in lines if ln.strip() and not _NOISE.match(ln)]
            if keep:
                print("\n".join(keep), file=sys.stderr, flush=True)
