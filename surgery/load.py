"""Load a model from a file or by `keras.applications` name, with clear errors."""

from __future__ import annotations

import difflib
import os
import stat
import zipfile
from pathlib import Path

import keras

from graft.errors import ModelLoadError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
KERAS_ARCHIVE_MEMBERS = ("config.json", "model.weights.h5")


def is_model_file(source: str | os.PathLike) -> bool:
    """Whether `source` names a model file (by suffix, or because it exists) rather than a
    `keras.applications` name."""
    path = Path(os.fspath(source))
    return path.suffix.lower() in MODEL_SUFFIXES or path.exists()


def application_names() -> dict[str, str]:
    """`keras.applications` constructors by lower-case name (`resnet50` -> `ResNet50`)."""
    return {
        attr.lower(): attr
        for attr in dir(keras.applications)
        if attr[:1].isupper() and callable(getattr(keras.applications, attr))
    }


def check_model_path(source: str | os.PathLike) -> None:
    """Refuse, before anything opens it, a model path that is missing, a folder or not a regular file.

    A pipe (FIFO) or a device would block or stream forever once Keras opens it, so it is refused by
    its type alone.

    Raises:
        ModelLoadError: one line saying what the path is and what to pass instead.
    """
    text = os.fspath(source)
    path = Path(text)
    if not path.exists():
        raise ModelLoadError(f"Model file {text} does not exist. Check the path, or pass a keras.applications name such as resnet50.")
    if path.is_dir():
        raise ModelLoadError(f"{text} is a folder, not a model file; pass a .keras or .h5 file.")
    if not path.is_file():
        kind = "a pipe (FIFO)" if stat.S_ISFIFO(path.stat().st_mode) else "not a regular file (a device or socket)"
        raise ModelLoadError(f"{text} is {kind}, not a model file; pass a .keras or .h5 file.")


def check_model_file(path: Path) -> None:
    """Refuse a truncated or corrupt model file before Keras reads it, with a message that says so.

    Keras reports such files in its own terms ("File format not supported", h5py's "truncated file:
    eof = ..."); graft says what the file is not and how many bytes it has.

    Raises:
        ModelLoadError: `Cannot load model file FILE: not a valid .keras archive: ...` (or `not a
            valid HDF5 model file: ...`).
    """
    size = path.stat().st_size
    where = f"Cannot load model file {path}"
    again = "save the model again (model.save) or copy the file again"
    if path.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{where}: not a valid .keras archive: not a complete zip file ({size:,} bytes; "
                                 f"truncated or corrupt); {again}.")
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ModelLoadError(f"{where}: not a valid .keras archive: {exc}; {again}.") from None
        missing = [m for m in KERAS_ARCHIVE_MEMBERS if m not in names]
        if missing:
            raise ModelLoadError(f"{where}: not a valid .keras archive: {', '.join(missing)} missing from the zip; "
                                 f"{again}.")
    elif path.suffix.lower() in (".h5", ".hdf5"):
        with path.open("rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
        if head != HDF5_SIGNATURE:
            raise ModelLoadError(f"{where}: not a valid HDF5 model file: it does not start with the HDF5 signature "
                                 f"({size:,} bytes); {again}.")


def _application(name: str):
    names = application_names()
    key = name.lower().replace("-", "").replace("_", "")
    if key not in names:
        return None, difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    return getattr(keras.applications, names[key]), []


def load_model(source: str | os.PathLike, weights: str | None = "imagenet",
               input_shape: tuple[int, int, int] | None = None, safe_mode: bool = True) -> keras.Model:
    """Load a model from a `.keras`/`.h5` file or build a `keras.applications` model by name.

    Args:
        source: a model file path, or a `keras.applications` name (`resnet50`, `MobileNetV2`, ...).
        weights: for a named model: `imagenet` (downloads unless cached), `none` / None (random),
            or a path to a weights file. Ignored for model files.
        input_shape: for a named model: `(height, width, channels)`; default the model's own.
        safe_mode: passed to `keras.models.load_model`; keep True unless you trust the file (it
            refuses to deserialize arbitrary code such as Lambda layers).

    Returns:
        A `keras.Model`.

    Raises:
        ModelLoadError: a missing or unreadable file, an unknown name, weights that cannot be had.
    """
    text = os.fspath(source)
    path = Path(text)
    if is_model_file(path):
        check_model_path(path)
        check_model_file(path)
        try:
            return keras.models.load_model(path, safe_mode=safe_mode, compile=False)
        except Exception as exc:  # noqa: BLE001 - any failure to load becomes one clear message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # a bad CRC in the zip, or h5py's OSError on a damaged HDF5 file (inside a .keras or not)
            if isinstance(exc, (zipfile.BadZipFile, OSError)) and not isinstance(exc, PermissionError):
                kind = "a valid .keras archive" if path.suffix.lower() == ".keras" else "a valid HDF5 model file"
                reason = f"not {kind}: {reason} (the file is corrupt; save or copy it again)"
            hint = " It uses code that safe mode refuses to run; pass --unsafe only if you trust the file." if "safe_mode" in str(exc) else ""
            raise ModelLoadError(f"Cannot load model file {text}: {reason[:300]}.{hint}") from None
    fn, close = _application(text)
    if fn is None:
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"{text!r} is neither a model file (.keras, .h5) nor a keras.applications name.{hint}"
        )
    kwargs = {}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    w = None if weights in (None, "none", "None", "") else weights
    weights_file = None
    if w not in (None, "imagenet"):
        weights_file = Path(w)
        if not weights_file.exists():
            raise ModelLoadError(f"Weights file {w} does not exist; pass --weights none, imagenet or a weights file path.")
        w = None
    try:
        model = fn(weights=w, **kwargs)
    except ValueError as exc:
        raise ModelLoadError(f"Cannot build {fn.__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a failed download surfaces as many exception types
        raise ModelLoadError(
            f"Cannot get ImageNet weights for {fn.__name__} ({type(exc).__name__}: {str(exc)[:120]}); "
            "this machine may be offline. Pass --weights PATH to a weights file you have, "
            "a .keras model file instead of the name, or --weights none for random weights."
        ) from None
    if weights_file is not None:
        try:
            model.load_weights(weights_file)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"Cannot load weights {weights_file} into {fn.__name__}: {str(exc)[:300]}") from None
    return model
