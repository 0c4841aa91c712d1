"""How a run reports progress: the `Reporter` a caller passes to `surgery.run`, and the Keras
callback that feeds it per batch. The CLI renders progress; the library default stays silent."""

from __future__ import annotations

import keras


class Reporter:
    """Receives progress; the CLI renders it, the library default stays silent."""

    def message(self, text: str) -> None:  # pragma: no cover - default is silent
        pass

    def epoch(self, phase: str, epoch: int, epochs: int, logs: dict, seconds: float) -> None:
        pass

    def batch(self, phase: str, epoch: int, step: int, steps: int) -> None:
        """Called after every training batch (step counts from 1)."""

    def phase(self, phase: str, start: int, end: int, epochs: int, images: int, steps: int) -> None:
        """Called before a phase's gradient steps: epochs `start + 1 .. end` of its `epochs` are
        about to run, each over `images` images in `steps` batches (for images/s and an ETA)."""

    def forward(self, task: str, done: int, total: int) -> None:
        """Called during a forward pass over images (bottleneck features, evaluation): `done` of
        `total` images."""


def forward(reporter, task: str, done: int, total: int) -> None:
    """`reporter.forward(...)`, for reporters written before it existed too."""
    method = getattr(reporter, "forward", None)
    if method is not None:
        method(task, done, total)


def announce_phase(reporter, phase: str, start: int, end: int, epochs: int, images: int, steps: int) -> None:
    """`reporter.phase(...)`, for reporters written before it existed too."""
    method = getattr(reporter, "phase", None)
    if method is not None:
        method(phase, start, end, epochs, images, steps)


class BatchProgress(keras.callbacks.Callback):
    def __init__(self, reporter: Reporter, phase: str, steps: int):
        super().__init__()
        self.reporter, self.phase, self.steps, self.current = reporter, phase, steps, 0
        self.first_loss: float | None = None  # the loss of the phase's first batch, before any update

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.first_loss is None and logs and "loss" in logs:
            self.first_loss = float(logs["loss"])
        self.reporter.batch(self.phase, self.current, batch + 1, self.steps)


__all__ = ["BatchProgress", "Reporter", "announce_phase", "forward"]
