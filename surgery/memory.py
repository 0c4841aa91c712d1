"""What a run held in memory: the process's peak resident memory, and where the two large things a
run may keep went - the decoded-image cache (`surgery.run_data`, `GRAFT_CACHE_BYTES`) and the
bottleneck features (`surgery.feature_store`, `GRAFT_FEATURE_BYTES`). Written to `metrics.json`
(`memory`) and the report.

    memory_record(data, state)   # {"peak_rss_mib": ..., "image_cache": {...}, "features": {...}}
"""

from __future__ import annotations

import sys


def peak_rss_mib() -> float | None:
    """The process's peak resident set size in MiB (`getrusage(RUSAGE_SELF).ru_maxrss`: KiB on
    Linux, bytes on macOS), or None where `resource` does not exist (Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def memory_record(data, state: dict) -> dict:
    """`metrics.json`'s `memory`: peak RSS so far (of the whole process: a caller's own memory
    counts too), the image cache's decision and size, and the bottleneck features' (None when no
    phase used them)."""
    return {"peak_rss_mib": peak_rss_mib(),
            "image_cache": {"in_memory": bool(data.spec.cache), "mib": round(data.cache_bytes / 2**20, 1),
                            "budget_mib": round(data.cache_budget / 2**20, 1)},
            "features": state.get("features")}


def describe_memory(record: dict | None) -> dict[str, str]:
    """The record as report lines: peak memory, image cache, bottleneck features."""
    if not record:
        return {}
    out = {}
    if record.get("peak_rss_mib") is not None:
        out["peak memory"] = f"{record['peak_rss_mib']:,.0f} MiB (peak resident memory of the process)"
    c = record.get("image_cache")
    if c:
        where = "kept in memory" if c["in_memory"] else "streamed from disk every epoch"
        out["decoded-image cache"] = f"{where} ({c['mib']:,.0f} MiB decoded; budget {c['budget_mib']:,.0f} MiB)"
    f = record.get("features")
    if f:
        where = "on disk, memory-mapped" if f["on_disk"] else "in memory"
        out["bottleneck features"] = (f"{where} ({f['rows']:,} rows, {f['mib']:,.1f} MiB; budget "
                                      f"{f['budget_mib']:,.0f} MiB)")
    return out


__all__ = ["describe_memory", "memory_record", "peak_rss_mib"]
