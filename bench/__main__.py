"""Run every benchmark and print one table: ``python -m bench [--quick] [--only NAME ...]``.

Each module in :data:`MODULES` exposes ``collect(*, quick: bool) -> list[Row]``; every row holds
our figure next to its baseline measured in the same run, and the ratio. Timings are medians of
repeated runs. The whole run takes a few minutes on a 2-core machine (``--quick`` well under one).
``--markdown FILE`` also writes the table (atomically) for ``docs/PERFORMANCE.md``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._table import Row, format_table, machine_line

#: Benchmark modules, in the order of the table.
MODULES = (
    "bench_load",
    "bench_fields",
    "bench_scoring",
    "bench_plan",
    "bench_interaction",
    "bench_drr",
    "bench_memory",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these modules")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args(argv)
    names = [m for m in MODULES if not args.only or m in args.only or m[6:] in args.only]
    heading = (
        f"machine: {platform.processor() or platform.machine()}, {machine_line()}, "
        f"Python {platform.python_version()}"
    )
    print(heading, flush=True)
    rows: list[Row] = []
    failures: list[str] = []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            collect = getattr(module, "collect", None)
            if collect is None:
                failures.append(f"{name}: has no collect()")
                continue
            got = collect(quick=args.quick)
        except Exception:  # a broken benchmark must not hide the others
            failures.append(f"{name}: failed\n{traceback.format_exc()}")
            continue
        rows.extend(got)
        print(f"  {name}: {len(got)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    table = format_table(rows)
    print()
    print(table)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; {machine_line()} at the end")
    for f in failures:
        print(f"NOT MEASURED: {f}")
    if args.markdown:
        from imaging.atomic import atomic_write_text

        atomic_write_text(Path(args.markdown), heading + "\n\n" + table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
