"""
A smoke run of the benchmark suite, so it cannot rot: every benchmark runs at
tiny sizes and prints its line. Timing values are never asserted (CI machines
are noisy); shapes are, and so are the correctness counters a benchmark
reports (POSTs, refreshes per rotation, reuse violations).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.slow

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"

#: Every line the suite prints, whatever the mode.
NAMES = {
    "hot_path_ratio",
    "hot_path_vs_authlib",
    "blocking_request_ratio",
    "access_token_us",
    "coalesce_posts_10k",
    "cross_process_refreshes_per_rotation_sqlite",
    "cross_process_refreshes_per_rotation_postgres",
    "transition_us",
    "scale_100k_load_s",
    "scale_100k_bytes_per_conn",
    "scale_100k_load_s_postgres",
    "keepalive_pass_100k_s",
    "keepalive_pass_100k_s_postgres",
    "refresh_throughput_ratio_sqlite",
    "refresh_throughput_ratio_postgres",
    "event_fanout_ratio",
    "pg_event_latency_ms_p50",
    "cold_import_ms",
    "relay_throughput_ratio",
    "relay_latency_ms_p50",
    "relay_latency_ms_p50_postgres",
    "event_bytes_per_conn_day_sqlite",
    "event_bytes_per_conn_day_postgres",
    "event_growth_with_retention_ratio_sqlite",
    "event_growth_with_retention_ratio_postgres",
}
POSTGRES_NAMES = {name for name in NAMES if "postgres" in name or name.startswith("pg_")}
NATS_NAMES = {name for name in NAMES if name.startswith("relay_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True,
        env=dict(os.environ) if env is None else env,
        timeout=90,
        check=False,
    )


def parse(out: bytes) -> dict[str, dict[str, Any]]:
    lines = [orjson.loads(line) for line in out.splitlines()]
    by_name = {line["name"]: line for line in lines}
    assert len(by_name) == len(lines), "a benchmark name appears twice"
    return by_name


@pytest.fixture(scope="module")
def smoke() -> dict[str, dict[str, Any]]:
    """`benchmarks/run.py --smoke --json`, run once for every test here."""
    process = run("--smoke", "--json")
    assert 0 == process.returncode, process.stderr.decode()[-5000:]
    return parse(process.stdout)


def test_every_benchmark_prints_one_well_formed_line(smoke: dict[str, dict[str, Any]]) -> None:
    assert NAMES == set(smoke)
    for line in smoke.values():
        assert {"name", "value", "unit", "target", "ok"} <= set(line)
        assert isinstance(line["ok"], bool)
        assert "error" not in line, line
        if line["value"] is None:
            assert not line["ok"]
            assert line["skipped"], line
        else:
            assert isinstance(line["value"], int | float)
        if "baseline" in line:
            assert isinstance(line["ratio"], int | float)


def test_only_missing_tools_may_skip(smoke: dict[str, dict[str, Any]]) -> None:
    """PostgreSQL benchmarks skip only outside CI; Authlib's only when it is not installed."""
    skipped = {name for name, line in smoke.items() if line.get("skipped")}
    allowed = set()
    if os.environ.get("CI") != "true":
        allowed |= POSTGRES_NAMES | NATS_NAMES
    if importlib.util.find_spec("authlib") is None or importlib.util.find_spec("httpx") is None:
        allowed.add("hot_path_vs_authlib")
    assert skipped <= allowed, {name: smoke[name]["skipped"] for name in skipped - allowed}


def ran(smoke: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    line = smoke[name]
    if line.get("skipped"):
        # run.py skips only when an optional part (PostgreSQL, Authlib) is
        # missing outside CI; under CI=true it reports an error instead.
        pytest.skip(f"{name}: {line['skipped']}")
    return line


def test_coalescing_makes_one_post(smoke: dict[str, dict[str, Any]]) -> None:
    line = ran(smoke, "coalesce_posts_10k")
    assert 10_000 == line["callers"]
    assert 1 == line["value"]
    assert 1 == line["distinct_tokens"]
    assert line["ok"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_cross_process_rotations_are_exact(smoke: dict[str, dict[str, Any]], kind: str) -> None:
    line = ran(smoke, f"cross_process_refreshes_per_rotation_{kind}")
    assert 1.0 == line["value"]
    assert line["connections"] * line["expiries"] == line["refreshes"]
    assert 0 == line["reuse_violations"]
    assert 0 == line["invalidations"]
    assert [] == line["errors"]
    assert line["ok"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_refresh_throughput_rotates_without_reuse(
    smoke: dict[str, dict[str, Any]], kind: str
) -> None:
    line = ran(smoke, f"refresh_throughput_ratio_{kind}")
    assert 0 == line["reuse_violations"]
    assert line["refreshes"] > 0
    assert line["generation"] > 0
    # Three store calls a rotation: the lease (it reads the record), the
    # journal, and the new tokens (which end the lease).
    calls = {name: count for name, (count, _us) in line["store_per_refresh"].items()}
    assert {"acquire_lease": 1.0, "update": 2.0} == calls


def test_hot_paths_never_refresh(smoke: dict[str, dict[str, Any]]) -> None:
    assert 0 == ran(smoke, "hot_path_ratio")["token_posts"]
    assert 0 == ran(smoke, "hot_path_vs_authlib")["token_posts"]


def test_scale_loads_every_connection(smoke: dict[str, dict[str, Any]]) -> None:
    load = ran(smoke, "scale_100k_load_s")
    memory = ran(smoke, "scale_100k_bytes_per_conn")
    assert load["connections"] == memory["connections"] > 0
    assert 2048 == memory["token_bytes"]
    assert ran(smoke, "scale_100k_load_s_postgres")["connections"] == load["connections"]
    # The worker checks that the pass saw every connection, or the line errs.
    assert ran(smoke, "keepalive_pass_100k_s")["connections"] == load["connections"]
    assert ran(smoke, "keepalive_pass_100k_s_postgres")["connections"] == load["connections"]


def test_events_are_delivered(smoke: dict[str, dict[str, Any]]) -> None:
    assert ran(smoke, "transition_us")["events_delivered"] > 0
    assert 10 == ran(smoke, "event_fanout_ratio")["subscribers"]
    assert ran(smoke, "pg_event_latency_ms_p50")["samples"] > 0


def test_relay_benchmarks_deliver_everything(smoke: dict[str, dict[str, Any]]) -> None:
    """The relay stored every event (checked by the benchmark) and the consumer saw them."""
    throughput = ran(smoke, "relay_throughput_ratio")
    assert throughput["events"] > 0
    assert throughput["relay_events_per_s"] > 0
    assert throughput["bare_publish_events_per_s"] > 0
    assert ran(smoke, "relay_latency_ms_p50")["samples"] > 0
    assert ran(smoke, "relay_latency_ms_p50_postgres")["samples"] > 0


def test_table_output() -> None:
    process = run("--smoke", "--only", "access_token,coalesce")
    assert 0 == process.returncode, process.stderr.decode()[-3000:]
    header, *rows = process.stdout.decode().splitlines()
    assert header.split() == ["name", "value", "unit", "target", "ok", "baseline", "ratio"]
    assert [row.split()[0] for row in rows] == ["access_token_us", "coalesce_posts_10k"]


def unreachable_postgres() -> str:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/test"


@pytest.mark.parametrize("ci", ["true", ""])
def test_unreachable_postgres_fails_only_under_ci(ci: str) -> None:
    env = dict(os.environ, CI=ci, AWX_TEST_POSTGRES=unreachable_postgres())
    process = run("--smoke", "--json", "--only", "pg_latency", env=env)
    (line,) = parse(process.stdout).values()
    assert "pg_event_latency_ms_p50" == line["name"]
    assert line["value"] is None
    if ci:
        assert 1 == process.returncode
        assert "CI=true requires PostgreSQL" in line["error"]
    else:
        assert 0 == process.returncode
        assert "not reachable" in line["skipped"]
