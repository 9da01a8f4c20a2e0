"""Rows of the benchmark table and the timing helpers every benchmark shares (not product code).

A benchmark module exposes ``collect(*, quick: bool) -> list[Row]``. Each row is one measured
quantity next to its baseline measured in the same process, and the ratio between the two, so
machine noise that slows both cancels out. ``python -m bench`` prints the rows of all modules as
one table.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table.

    ``value`` and ``baseline`` are in ``unit``; ``ratio`` is how many times better ours is
    (baseline / value for times, value / baseline for rates); ``target`` says what ratio or
    value is aimed at, and ``ok`` whether it holds (None when there is no target).
    """

    group: str
    what: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""


def median_time(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    walls = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def side_by_side(
    ours: Callable[[], object], baseline: Callable[[], object], *, repeats: int, warmup: int = 1
) -> tuple[float, float]:
    """Median wall times of ``ours`` and ``baseline``, run alternately so drift hits both."""
    for _ in range(warmup):
        ours()
        baseline()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((ours, a), (baseline, b)):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


_CHILD_PEAK = """
import json, sys
sys.path.insert(0, {root!r})
{setup}
def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
with open('/proc/self/clear_refs', 'w') as f:  # reset the peak (VmHWM) to the current RSS
    f.write('5')
_before = _status('VmRSS')
{run}
print(json.dumps({{"rise": _status('VmHWM') - _before}}))
"""


def child_peak_rise(setup: str, run: str, *, timeout_s: float = 900.0) -> int:
    """Peak RSS rise (bytes) of ``run`` in a fresh Python process, after ``setup`` ran there.

    The kernel's peak counter is reset after ``setup`` (``/proc/self/clear_refs``), so imports
    and input preparation do not count.
    """
    import json
    import subprocess
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = _CHILD_PEAK.format(root=root, setup=setup, run=run)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=timeout_s
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rise"])


def machine_line() -> str:
    """CPU count and load average, for the table's heading."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.2f}"


def format_table(rows: list[Row]) -> str:
    """The rows as one fixed-width text table (also valid Markdown)."""
    head = ("group", "what", "ours", "baseline", "baseline value", "ratio", "target", "ok")
    lines = []
    for r in rows:
        base = "" if r.baseline is None else _fmt(r.baseline, r.unit)
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(
            (r.group, r.what, _fmt(r.value, r.unit), r.baseline_name, base, ratio, r.target, ok)
        )
    widths = [max([len(h)] + [len(x[n]) for x in lines]) for n, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |")
    notes = [f"- {r.group} / {r.what}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 1.0 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if abs(value) >= 1e4:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"
