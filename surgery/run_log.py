"""`run.log`: the run's progress as plain lines in its run directory, for whoever did not watch the
terminal (a run in the background, over ssh, under a scheduler).

`RunLog` is a `Reporter` that writes every message, one line per epoch (its losses, images/s, the
phase's elapsed time and ETA), a line every `LOG_SECONDS` inside a long epoch or forward pass, and
passes every call on to the reporter it wraps (the CLI's bar, or a caller's). Lines are appended
(line-buffered, one `write` each), so a resumed run continues the same log; a log that cannot be
written never stops the run.

    reporter = RunLog(run_dir / "run.log", reporter)
"""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path

from surgery.progress import Reporter, announce_phase, forward

#: Seconds between progress lines inside an epoch or a forward pass (the epoch lines come anyway).
LOG_SECONDS = 30.0


def clock(seconds: float) -> str:
    """A duration for people: `12.3 s`, `4 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class RunLog(Reporter):
    """A `Reporter` that appends progress lines to `path` and forwards every call to `inner`."""

    def __init__(self, path: Path, inner: Reporter | None = None, every_seconds: float = LOG_SECONDS):
        self.path = Path(path)
        self.inner = inner or Reporter()
        self.every_seconds = every_seconds
        self._phase: dict | None = None
        self._forward: dict | None = None
        self._last_line = time.monotonic()

    def write(self, text: str) -> None:
        """Append one timestamped line (best effort: a log never stops a run)."""
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            with open(self.path, "a", encoding="utf-8", buffering=1) as fh:
                fh.write(f"{stamp}  {text}\n")
        except OSError:
            pass
        self._last_line = time.monotonic()

    # -- the Reporter protocol ----------------------------------------------------------------

    def message(self, text: str) -> None:
        self.write(text)
        self.inner.message(text)

    def phase(self, phase: str, start: int, end: int, epochs: int, images: int, steps: int) -> None:
        self._phase = {"name": phase, "start": start, "end": end, "epochs": epochs, "images": images,
                       "steps": steps, "t0": time.monotonic()}
        self.write(f"phase {phase}: epochs {start + 1}-{end} of {epochs}, {images:,} images per epoch in "
                   f"{steps:,} batches")
        announce_phase(self.inner, phase, start, end, epochs, images, steps)

    def batch(self, phase: str, epoch: int, step: int, steps: int) -> None:
        self.inner.batch(phase, epoch, step, steps)
        if time.monotonic() - self._last_line < self.every_seconds:
            return
        p = self._phase if self._phase and self._phase["name"] == phase else None
        if p is None:
            self.write(f"{phase} epoch {epoch}: batch {step:,}/{steps:,}")
            return
        per_batch = math.ceil(p["images"] / max(1, p["steps"]))
        done = (epoch - p["start"] - 1) * p["images"] + min(step * per_batch, p["images"])
        self.write(f"{phase} epoch {epoch}/{p['epochs']}: batch {step:,}/{steps:,}, " + self._pace(p, done))

    def epoch(self, phase: str, epoch: int, epochs: int, logs: dict, seconds: float) -> None:
        self.inner.epoch(phase, epoch, epochs, logs, seconds)
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float))]
        line = f"{phase} epoch {epoch}/{epochs}  " + "  ".join(parts) + f"  ({clock(seconds)}"
        p = self._phase if self._phase and self._phase["name"] == phase else None
        if p is not None and seconds > 0:
            line += f", {p['images'] / seconds:,.1f} images/s); " + self._pace(p, (epoch - p["start"]) * p["images"])
        else:
            line += ")"
        self.write(line)

    def forward(self, task: str, done: int, total: int) -> None:
        forward(self.inner, task, done, total)
        now = time.monotonic()
        f = self._forward
        if f is None or f["task"] != task or done < f["done"]:
            f = self._forward = {"task": task, "t0": now, "done": 0}
            self.write(f"{task}: {total:,} images")
            if done == 0:
                return
        f["done"] = done
        rate = done / max(now - f["t0"], 1e-9)
        if done >= total:
            self.write(f"{task}: {done:,} images in {clock(now - f['t0'])} ({rate:,.1f} images/s)")
            self._forward = None
        elif now - self._last_line >= self.every_seconds:
            eta = (total - done) / rate if rate > 0 else math.inf
            self.write(f"{task}: {done:,}/{total:,} images, {rate:,.1f} images/s, ETA {clock(eta)}")

    def _pace(self, p: dict, done: int) -> str:
        """Images/s over the phase so far, its elapsed time and the time left to its last epoch."""
        elapsed = time.monotonic() - p["t0"]
        total = (p["end"] - p["start"]) * p["images"]
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else math.inf
        return (f"phase {rate:,.1f} images/s, {clock(elapsed)} elapsed, ETA {clock(max(eta, 0.0))}"
                if math.isfinite(eta) else f"phase {clock(elapsed)} elapsed")


__all__ = ["LOG_SECONDS", "RunLog", "clock"]
