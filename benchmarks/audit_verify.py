"""Verify a large audit log: events per second and peak memory.

    python -m benchmarks.audit_verify [--events 1000000] [--workers N] [--keep DIR]

Writes a log of ``--events`` realistic events with the real writer (``AuditLog``, in
batches, as group commit writes them), then verifies it in a fresh process, so the peak
RSS reported is verification's alone (its worker processes included), and prints one
JSON line. Target (issue 7): at least 600,000 events/s with memory flat in the log's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentzt.audit import AuditLog
from agentzt.bench.micro import sample_draft

_VERIFY = """
import json, resource, sys, time
from pathlib import Path
from agentzt.audit import verify_chain
workers = int(sys.argv[2]) if sys.argv[2] != "auto" else None
started = time.perf_counter()
report = verify_chain(Path(sys.argv[1]), workers=workers)
elapsed = time.perf_counter() - started
# VmHWM starts afresh at exec; ru_maxrss would also count the parent's pages, which this
# process had between its fork and its exec.
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [line for line in lines if line.startswith("VmHWM:")]
own = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"events": report.events, "seconds": elapsed,
                  "rss_kib": own, "worker_rss_kib": children}))
"""


def write_log(path: Path, events: int, batch: int = 1000) -> None:
    with AuditLog(path, max_file_bytes=1 << 40) as log:
        for start in range(0, events, batch):
            drafts = [sample_draft(i) for i in range(start, min(events, start + batch))]
            log.append_batch(drafts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", default="auto", help="verify processes, or 'auto'")
    parser.add_argument("--keep", type=Path, help="write the log here and keep it")
    args = parser.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="agentzt-verify-"))
    path = directory / "gateway-audit.jsonl"
    try:
        _measure(path, args.events, args.workers)
    finally:
        if args.keep is None:
            shutil.rmtree(directory)


def _measure(path: Path, events: int, workers: str) -> None:
    if not path.exists():
        started = time.perf_counter()
        write_log(path, events)
        took = time.perf_counter() - started
        print(f"wrote {events} events in {took:.1f} s", file=sys.stderr)
    out = subprocess.run(
        [sys.executable, "-c", _VERIFY, str(path), workers],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    print(
        json.dumps(
            {
                "events": result["events"],
                "bytes": path.stat().st_size,
                "seconds": round(result["seconds"], 3),
                "events_per_second": round(result["events"] / result["seconds"]),
                "peak_rss_mib": round(result["rss_kib"] / 1024, 1),
                "peak_worker_rss_mib": round(result["worker_rss_kib"] / 1024, 1),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
