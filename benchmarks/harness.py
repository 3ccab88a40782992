"""A small benchmark harness: cases of "ours against a bare baseline" -> throughput, ratio, peak RSS -> JSON.

Each side of a case runs in its own spawned process, so that its peak RSS is its own and neither side's
memory arenas or caches help the other. The two processes take turns (only one runs at a time, the other
blocks on its pipe), the order swapping every repeat, and the median run of each side is reported: on a
shared, noisy machine a slow spell then hits both sides rather than one.

A side is a module-level `factory(**kwargs)` (picklable, run in the child) returning `(step, info)`:
`step()` does one unit of work and returns how many items it processed; `info` is a JSON-able dict
(providers, threads, sanity checks) copied into the result.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

Step = Callable[[], int]
Factory = Callable[..., tuple[Step, dict[str, Any]]]


@dataclass(frozen=True)
class Side:
    """One side of a case, built in a fresh process by `factory(**kwargs)`."""

    factory: Factory
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """`ours` against `bare` (None: no baseline, throughput only); `target` is the ratio ours/bare to reach."""

    name: str
    unit: str
    ours: Side
    bare: Side | None = None
    target: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in percent."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _load() -> dict[str, float | None]:
    return {"load_1min": round(os.getloadavg()[0], 2), "cpu_pressure_10s_pct": _cpu_pressure()}


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def _run_for(step: Step, seconds: float) -> tuple[int, float, float]:
    """Call `step` until `seconds` have passed (at least once); return items, elapsed and CPU seconds."""
    items, start, cpu = 0, time.perf_counter(), _cpu_seconds()
    while True:
        items += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return items, elapsed, _cpu_seconds() - cpu


def _serve(conn: Connection, side: Side, warmup: float) -> None:
    """Child process: build the side, warm it up, then run on request until told to stop."""
    try:
        step, info = side.factory(**side.kwargs)
        loaded = _max_rss_mib()
        _run_for(step, warmup)
        conn.send(("ready", {"info": info, "rss_loaded_mib": loaded}))
        while (message := conn.recv())[0] == "run":
            conn.send(("ok", _run_for(step, message[1])))
        conn.send(("ok", _max_rss_mib()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Worker:
    """Parent's handle on one side's process."""

    def __init__(self, side: Side, warmup: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # a clean process: no state inherited from the parent
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, side, warmup), daemon=True)
        self.process.start()
        child.close()
        self.ready = self._reply()

    def _reply(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"benchmark process died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark side failed:\n{value}")
        return value

    def run(self, seconds: float) -> tuple[float, float]:
        """Items per second, and CPU milliseconds per item (all threads, spin-waits included)."""
        self.conn.send(("run", seconds))
        items, elapsed, cpu = self._reply()
        return items / elapsed, cpu * 1e3 / items

    def stop(self) -> float:
        self.conn.send(("stop",))
        peak = self._reply()
        self.process.join()
        return peak


def measure(case: Case, *, seconds: float, repeats: int = 3, warmup: float = 1.0) -> dict[str, Any]:
    """Run `case`: both sides built and warmed up, then `repeats` alternating runs of `seconds` each.

    On a machine shared with bursty work, many short runs (a step or two each) beat a few long ones: a
    burst then spoils a few runs of both sides, which the medians drop.
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _load()
    sides = {"ours": case.ours} | ({"bare": case.bare} if case.bare else {})
    workers: dict[str, _Worker] = {}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    cpu_ms: dict[str, list[float]] = {name: [] for name in sides}
    loads = [load_before]
    try:
        for name, side in sides.items():
            workers[name] = _Worker(side, warmup)
        for r in range(repeats):
            for name in list(workers)[:: 1 if r % 2 else -1]:  # bare first on even repeats
                rate, cost = workers[name].run(seconds)
                runs[name].append(rate)
                cpu_ms[name].append(cost)
            loads.append(_load())
        peaks = {name: w.stop() for name, w in workers.items()}
    finally:
        for w in workers.values():
            if w.process.is_alive():
                w.process.kill()
    median = {name: statistics.median(values) for name, values in runs.items()}
    ratio = median["ours"] / median["bare"] if "bare" in median else None
    # Each repeat's own ratio: its two runs were next to each other in time, so saw similar load.
    paired = [o / b for o, b in zip(runs["ours"], runs["bare"])] if "bare" in runs else []
    return {
        "name": case.name,
        "unit": case.unit,
        "ours": round(median["ours"], 2),
        "bare": round(median["bare"], 2) if "bare" in median else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "paired_ratio_median": round(statistics.median(paired), 3) if paired else None,
        "paired_ratios": [round(v, 3) for v in paired],
        "target": case.target,
        "met": (ratio >= case.target) if ratio is not None and case.target is not None else None,
        "machine": machine(),
        "date": started.isoformat(timespec="seconds"),
        "settings": case.settings | {"seconds_per_run": seconds, "repeats": repeats, "warmup_s": warmup},
        "runs": {name: [round(v, 2) for v in values] for name, values in runs.items()},
        # Less sensitive to other tenants than throughput, but counts onnxruntime's spin-waits.
        "cpu_ms_per_item": {name: round(statistics.median(v), 2) for name, v in cpu_ms.items()},
        "peak_rss_mib": {name: round(v, 1) for name, v in peaks.items()},
        "rss_loaded_mib": {name: round(w.ready["rss_loaded_mib"], 1) for name, w in workers.items()},
        "info": {name: w.ready["info"] for name, w in workers.items()},
        "load_avg_1min": {"before": loads[0]["load_1min"], "after": loads[-1]["load_1min"]},
        "load": loads,  # 1-min load and CPU pressure before the runs, then after each repeat
    }


def _first_line(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
    except OSError:
        return None


def _gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model and share, memory, GPU, library versions."""
    import numpy
    import onnxruntime

    memory = _first_line("/proc/meminfo", "MemTotal")
    return {
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "gpu": _gpu_name(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """A readable fixed-width table of results."""
    header = (
        "case",
        "unit",
        "ours",
        "bare",
        "ratio",
        "paired",
        "target",
        "met",
        "RSS MiB ours/bare",
        "load max",
    )
    rows = [header]
    for r in results:
        rss = r["peak_rss_mib"]
        load = max([e["load_1min"] for e in r.get("load", [])] or r["load_avg_1min"].values())
        rows.append(
            (
                r["name"],
                r["unit"],
                _fmt(r["ours"]),
                _fmt(r["bare"]),
                _fmt(r["ratio"], 3),
                _fmt(r.get("paired_ratio_median"), 3),
                _fmt(r["target"], 2),
                {True: "yes", False: "NO", None: "-"}[r["met"]],
                f"{_fmt(rss.get('ours'), 0)}/{_fmt(rss.get('bare'), 0)}",
                f"{load:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write(results: list[dict[str, Any]], path: str | Path) -> None:
    """Write the results as a JSON list of cases."""
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
