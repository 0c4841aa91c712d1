"""A truncated or corrupt model file gives one clear `ModelLoadError`, in the library and the CLI.

The files are real: copies of the bundled examples/models/cifar_a_cnn.keras, cut short or with bytes
overwritten, and HDF5 files that are not whole. No mocks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from graft.errors import ModelLoadError
from surgery.load import load_model

MODEL = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


def damaged(tmp_path, name: str, how: str):
    data = MODEL.read_bytes()
    if how == "half":
        data = data[: len(data) // 2]
    elif how == "tail":  # only the zip's central directory is lost
        data = data[:-10]
    elif how == "empty":
        data = b""
    elif how == "weights":  # bytes overwritten inside model.weights.h5: the zip CRC no longer fits
        data = data[:600_000] + bytes(1000) + data[601_000:]
    elif how == "hdf5_cut":
        data = b"\x89HDF\r\n\x1a\n" + bytes(100)
    elif how == "not_hdf5":
        data = b"hello"
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, how, message", [
    ("half.keras", "half", r"not a valid \.keras archive: not a complete zip file \(623,189 bytes; truncated"),
    ("tail.keras", "tail", r"not a valid \.keras archive: not a complete zip file"),
    ("empty.keras", "empty", r"not a valid \.keras archive: not a complete zip file \(0 bytes"),
    ("weights.keras", "weights", r"not a valid \.keras archive: Bad CRC-32 for file 'model\.weights\.h5'"),
    ("cut.h5", "hdf5_cut", r"not a valid HDF5 model file: "),
    ("junk.h5", "not_hdf5", r"not a valid HDF5 model file: it does not start with the HDF5 signature"),
])
def test_damaged_model_file_is_a_model_load_error(tmp_path, name, how, message):
    path = damaged(tmp_path, name, how)
    with pytest.raises(ModelLoadError, match=rf"^Cannot load model file .*{name}: {message}") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_zip_without_the_model_members_is_not_a_keras_archive(tmp_path):
    import zipfile

    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(ModelLoadError, match=r"not a valid \.keras archive: config\.json, model\.weights\.h5 "
                                             r"missing from the zip"):
        load_model(path)


def test_the_intact_model_still_loads():
    assert load_model(MODEL).count_params() > 0


def test_cli_inspect_of_a_truncated_model_exits_2_with_one_line(tmp_path):
    path = damaged(tmp_path, "cifar_a_cnn.keras", "half")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "inspect", str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"graft: error: Cannot load model file {path}: not a valid .keras archive: "
                               "not a complete zip file")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
