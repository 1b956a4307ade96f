"""``agentzt bench``: it runs both chains for real and reports numbers that add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentzt.bench.micro import audit_append, decision, token_verification
from agentzt.bench.run import flatness, ratios, windows


def test_bench_runs_agentzt_and_the_bare_chain_and_compares_them(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentzt",
            "bench",
            "--seconds",
            "1",
            "--connections",
            "2",
            "--no-micro",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    by_name = {s["scenario"]: s for s in report["scenarios"]}
    assert set(by_name) == {"agentzt", "bare"}
    for scenario in by_name.values():
        assert scenario["errors"] == 0
        assert scenario["requests"] > 0 and scenario["rps"] > 0
        assert 0 < scenario["p50_ms"] <= scenario["p95_ms"] <= scenario["p99_ms"]
        assert sum(scenario["timeline"]) == scenario["requests"]
        for cpu in scenario["cpu_s_per_1000"].values():
            assert cpu > 0
        for rss in scenario["rss_mib"].values():
            assert 0 < rss["start"] <= rss["peak"]
    assert set(by_name["agentzt"]["cpu_s_per_1000"]) == {"gateway", "proxy"}
    assert set(by_name["bare"]["cpu_s_per_1000"]) == {"upstream", "proxy"}
    expected = round(by_name["agentzt"]["rps"] / by_name["bare"]["rps"], 3)
    assert report["ratios"]["rps_ratio"] == expected
    # The stack left nothing behind in the working directory.
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_scenario_is_a_usage_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agentzt", "bench", "--scenario", "warp-drive"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "warp-drive" in line and "agentzt" in line


def test_flatness_and_windows() -> None:
    timeline = [100] * 60 + [90] * 60 + [96] * 60
    assert flatness(timeline) == 0.96
    assert list(windows(timeline)) == [100.0, 90.0, 96.0]
    assert flatness([100] * 90) is None  # too short for a first and a last minute


def test_ratios_need_both_chains() -> None:
    ours = {"scenario": "agentzt", "rps": 600.0, "p99_ms": 12.0}
    bare = {"scenario": "bare", "rps": 1000.0, "p99_ms": 8.0}
    assert ratios([ours]) is None
    found = ratios([ours, bare])
    assert found is not None
    assert (found["rps_ratio"], found["p99_ratio"]) == (0.6, 1.5)


def test_microbenchmarks_measure_the_real_parts(tmp_path: Path) -> None:
    assert 0 < decision(tmp_path, roles=20, agents=200) < 1000
    tokens = token_verification()
    # A cached verification skips the signature check, so it is far cheaper.
    assert 0 < tokens["cached_us"] < tokens["first_us"]
    appended = audit_append(tmp_path, "batch", waiters=4, events=200)
    assert appended["events_per_s"] > 0
    assert appended["p50_us"] <= appended["p99_us"]
    lines = (tmp_path / "audit-batch.jsonl").read_bytes().splitlines()
    assert len(lines) == 200


@pytest.mark.parametrize("mode", ["always", "never"])
def test_audit_append_benchmark_writes_a_verifying_log(tmp_path: Path, mode: str) -> None:
    from agentzt.audit import verify_chain

    audit_append(tmp_path, mode, waiters=3, events=90)
    assert verify_chain(tmp_path / f"audit-{mode}.jsonl").events == 90
