"""
awx-connection benchmarks (``pip install -e '.[bench]'`` for the Authlib comparison).

    python benchmarks/run.py                  # readable table, full sizes (5-10 minutes)
    python benchmarks/run.py --quick --json   # fewer rounds (at most 5 minutes), JSON lines
    python benchmarks/run.py --smoke          # tiny sizes, for CI (numbers meaningless)
    python benchmarks/run.py --quick --only hot_path,import
    python benchmarks/run.py --quick --only transition --profile /tmp/prof

Each line: ``name``, ``value``, ``unit``, ``target``, ``ok`` and, where a
baseline is measured in the same run, ``baseline`` and ``ratio``; extra
fields give the raw figures behind a ratio, where the time goes, and the
correctness counters. A benchmark that could not run has ``value: null`` and
``error`` (it broke) or ``skipped`` (PostgreSQL or NATS unreachable outside CI,
Authlib not installed, or left out by ``--quick``). Timings are medians of
interleaved batches; compare ratios, not absolute numbers, since the
machines are noisy. docs/performance.md explains every measurement.

Exit status: 0 when every benchmark ran (met or missed targets alike), 1
when one broke. PostgreSQL benchmarks need ``AWX_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``); unreachable, they are skipped,
but under ``CI=true`` they break the run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
from _blocking import bench_blocking_request
from _common import EPOCH, REDIRECT, Sizes, config_for, failed, postgres_unreachable
from _inprocess import (
    Bench,
    bench_access_token,
    bench_coalesce,
    bench_event_fanout,
    bench_hot_path,
    bench_hot_path_vs_authlib,
    bench_refresh_throughput,
    bench_transition,
)
from _processes import (
    bench_cross_process,
    bench_import,
    bench_pg_event_latency,
    bench_scale,
)
from _relay import bench_relay_latency, bench_relay_throughput, nats_unreachable
from _storage import bench_event_storage

from awx_connection.testing import FakeAirwallex, ManualClock

Lines = dict[str, Any] | list[dict[str, Any]]


@attrs.frozen
class Spec:
    """One benchmark: the lines it prints (name, unit, target) and how to run it."""

    key: str
    lines: tuple[tuple[str, str, str], ...]
    run: Callable[[], Awaitable[Lines]]
    postgres: bool = False
    #: Needs the NATS JetStream server (AWX_TEST_NATS, default nats://127.0.0.1:4222).
    nats: bool = False
    #: Why this mode leaves the benchmark out (it still prints its lines).
    skip: str | None = None


def specs(bench: Bench, sizes: Sizes, tmp: Path) -> list[Spec]:
    def cross(kind: str) -> Spec:
        return Spec(
            f"cross_process_{kind}",
            (
                (
                    f"cross_process_refreshes_per_rotation_{kind}",
                    "refreshes/rotation",
                    "== 1.0, 0 reuse",
                ),
            ),
            lambda: bench_cross_process(sizes, kind, tmp),
            postgres=kind == "postgres",
        )

    def storage(kind: str) -> Spec:
        suffix = f"_{kind}"
        return Spec(
            f"event_storage{suffix}",
            (
                (f"event_bytes_per_conn_day{suffix}", "B/connection/day", "report"),
                (f"event_growth_with_retention_ratio{suffix}", "x", "<= 0.1"),
            ),
            lambda: bench_event_storage(sizes, kind, tmp),
            postgres=kind == "postgres",
        )

    def throughput(kind: str) -> Spec:
        return Spec(
            f"refresh_throughput_{kind}",
            ((f"refresh_throughput_ratio_{kind}", "x", ">= 0.7"),),
            lambda: bench_refresh_throughput(bench, sizes, kind, tmp),
            postgres=kind == "postgres",
        )

    return [
        Spec(
            "hot_path", (("hot_path_ratio", "x", "<= 1.05"),), lambda: bench_hot_path(bench, sizes)
        ),
        Spec(
            "authlib",
            (("hot_path_vs_authlib", "x", "<= 1.0"),),
            lambda: bench_hot_path_vs_authlib(bench, sizes),
        ),
        Spec(
            "blocking",
            (("blocking_request_ratio", "x", "<= 1.5"),),
            lambda: bench_blocking_request(bench, sizes),
        ),
        Spec(
            "access_token",
            (("access_token_us", "us", "<= 3"),),
            lambda: bench_access_token(bench, sizes),
        ),
        Spec(
            "coalesce",
            (("coalesce_posts_10k", "POSTs", "== 1"),),
            lambda: bench_coalesce(bench, sizes),
        ),
        cross("sqlite"),
        cross("postgres"),
        Spec(
            "transition",
            (("transition_us", "us", "<= 25"),),
            lambda: bench_transition(bench, sizes),
        ),
        Spec(
            "scale",
            (
                ("scale_100k_load_s", "s", "<= 3"),
                ("keepalive_pass_100k_s", "s", "<= 3"),
                ("scale_100k_bytes_per_conn", "B", "<= 4096"),
            ),
            lambda: bench_scale(sizes, "sqlite", tmp),
        ),
        Spec(
            "scale_postgres",
            (
                ("scale_100k_load_s_postgres", "s", "<= 3"),
                ("keepalive_pass_100k_s_postgres", "s", "<= 3"),
            ),
            lambda: bench_scale(sizes, "postgres", tmp),
            postgres=True,
        ),
        throughput("sqlite"),
        throughput("postgres"),
        Spec(
            "fanout",
            (("event_fanout_ratio", "x", ">= 0.5"),),
            lambda: bench_event_fanout(bench, sizes),
        ),
        Spec(
            "pg_latency",
            (("pg_event_latency_ms_p50", "ms", "<= 50"),),
            lambda: bench_pg_event_latency(sizes, tmp),
            postgres=True,
        ),
        storage("sqlite"),
        storage("postgres"),
        Spec("import", (("cold_import_ms", "ms", "<= 1.5x aiohttp"),), lambda: bench_import(sizes)),
        Spec(
            "relay_throughput",
            (("relay_throughput_ratio", "x", ">= 0.5"),),
            lambda: bench_relay_throughput(sizes, tmp),
            nats=True,
        ),
        Spec(
            "relay_latency",
            (("relay_latency_ms_p50", "ms", "<= 50"),),
            lambda: bench_relay_latency(sizes, "sqlite", tmp),
            nats=True,
        ),
        Spec(
            "relay_latency_postgres",
            (("relay_latency_ms_p50_postgres", "ms", "<= 50"),),
            lambda: bench_relay_latency(sizes, "postgres", tmp),
            postgres=True,
            nats=True,
        ),
    ]


async def run_spec(
    spec: Spec,
    postgres_problem: str | None,
    profile: Path | None = None,
    nats_problem: str | None = None,
) -> list[dict[str, Any]]:
    if spec.skip is not None:
        return [failed(*line, skipped=spec.skip) for line in spec.lines]
    for needed, problem, server in (
        (spec.postgres, postgres_problem, "PostgreSQL"),
        (spec.nats, nats_problem, "NATS JetStream"),
    ):
        if needed and problem is not None:
            if os.environ.get("CI") == "true":
                return [
                    failed(*line, error=f"CI=true requires {server}: {problem}")
                    for line in spec.lines
                ]
            return [failed(*line, skipped=problem) for line in spec.lines]
    started = time.perf_counter()
    profiler = cProfile.Profile() if profile is not None else None
    try:
        if profiler is not None:
            profiler.enable()
        produced = await spec.run()
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"[:500]
        return [failed(*line, error=error) for line in spec.lines]
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile / f"{spec.key}.prof")
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(15)
    lines = produced if isinstance(produced, list) else [produced]
    seconds = time.perf_counter() - started
    print(f"[{spec.key}: {seconds:.1f} s]", file=sys.stderr, flush=True)
    return lines


def table(lines: list[dict[str, Any]]) -> str:
    """The readable form: one row per line, the extra fields left to ``--json``."""
    width = max(len(line["name"]) for line in lines) + 2
    rows = [
        f"{'name':<{width}}{'value':>12} {'unit':<20}{'target':<17}{'ok':<6}"
        f"{'baseline':>10}{'ratio':>9}"
    ]
    for line in lines:
        value, base, ratio = line["value"], line.get("baseline"), line.get("ratio")
        if line.get("error"):
            ok = "ERROR"
        elif line.get("skipped"):
            ok = "skip"
        else:
            ok = "yes" if line["ok"] else "NO"
        rows.append(
            f"{line['name']:<{width}}{'-' if value is None else value:>12} {line['unit']:<20}"
            f"{line['target']:<17}{ok:<6}{'' if base is None else base:>10}"
            f"{'' if ratio is None else ratio:>9}"
        )
    return "\n".join(rows)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (at most 5 minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--only", default="", help="comma-separated benchmark keys to run")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each benchmark (cProfile, this process): DIR/<key>.prof, top 15 on stderr",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.for_mode("smoke" if args.smoke else "quick" if args.quick else "full")
    only = {key for key in args.only.split(",") if key}
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    clock = ManualClock(EPOCH)
    lines: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="awx-bench-") as tmp:
        async with FakeAirwallex(clock=clock, redirect_uris=[REDIRECT]) as fake:
            bench = Bench(
                fake, clock, config_for(fake.base_url, fake.client_id, fake.client_secret)
            )
            chosen = [s for s in specs(bench, sizes, Path(tmp)) if not only or s.key in only]
            unknown = only - {s.key for s in specs(bench, sizes, Path(tmp))}
            if unknown:
                parser.error(f"unknown benchmark keys: {sorted(unknown)}")
            postgres_problem = None
            if any(s.postgres and s.skip is None for s in chosen):
                postgres_problem = await postgres_unreachable()
            nats_problem = None
            if any(s.nats and s.skip is None for s in chosen):
                nats_problem = await nats_unreachable()
            for spec in chosen:
                for line in await run_spec(spec, postgres_problem, args.profile, nats_problem):
                    lines.append(line)
                    if args.json:
                        print(orjson.dumps(line).decode(), flush=True)
    print(f"[total: {time.perf_counter() - started:.1f} s, mode {sizes.mode}]", file=sys.stderr)
    if not args.json:
        print(table(lines))
    return 1 if any(line.get("error") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
