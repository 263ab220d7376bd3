#!/usr/bin/env python3
"""Runs the workspace's tests, each in a process of its own, several at a time (ops/test calls
this after the build).

`cargo test` runs one test binary after another, and the tests of a binary as threads of one
process. Prism's integration tests spend most of their time waiting on Kafka, PostgreSQL and
Redis, so running several at once keeps the suite short; and some read process-wide state
(the metrics registry), so each test gets its own process, as cargo-nextest would run it. Every
test runs in its package's directory with `--exact`, as `cargo test` would run it.

    run_tests.py [--jobs N] [--timeout SECONDS] [cargo test selection args] [-- name filter]

Prints one line per test as it finishes, then the full output of every failed test, then a
summary. Exits non-zero if any test failed or timed out, or nothing could be listed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# Slowest first, so the long ones do not start last and stretch the run: names of test
# targets or of the modules inside them (`end_to_end::broker_cluster::…`); anything else
# follows in build order.
SLOW_FIRST = [
    "broker_cluster", "broker_faults", "rebuild", "kill", "membership", "dlq", "redis_cluster",
    "group_churn", "offsets", "postgres_faults", "rebalance", "flow_control", "cluster", "replicas",
    "tls", "pipeline", "read_your_writes", "relay",
]
RANK = {name: i for i, name in enumerate(SLOW_FIRST)}


def slowness_rank(binary, name):
    """Where a test starts: by the first of its target's and modules' names in SLOW_FIRST."""
    parts = [binary["target"], *name.split("::")]
    return min((RANK.get(part, len(SLOW_FIRST)) for part in parts), default=len(SLOW_FIRST))


def list_binaries(cargo_args):
    """The test executables of a `cargo test --no-run` with these selection arguments."""
    command = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics", *cargo_args]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"run_tests: `{' '.join(command)}` failed (exit {result.returncode})")
    binaries = []
    for line in result.stdout.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message.get("profile", {}).get("test"):
            continue
        target = message["target"]
        package = re.sub(r"[#@].*$", "", message["package_id"].rsplit("/", 1)[-1])
        binaries.append({
            "name": f"{package}::{target['name']}" if target["kind"] != ["lib"] else f"{package} (unit)",
            "target": target["name"],
            "executable": message["executable"],
            "directory": os.path.dirname(message["manifest_path"]),
        })
    return binaries


def list_tests(binary, name_filter):
    """The test names of one binary (optionally those containing a filter)."""
    result = subprocess.run(
        [binary["executable"], "--list", "--format", "terse"],
        cwd=binary["directory"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        sys.exit(f"run_tests: listing the tests of {binary['name']} failed:\n{result.stdout}")
    names = [line[: -len(": test")] for line in result.stdout.splitlines() if line.endswith(": test")]
    return [n for n in names if not name_filter or any(f in n for f in name_filter)]


def run_test(test, timeout, print_lock):
    binary, name = test
    started = time.monotonic()
    environment = dict(os.environ, CARGO_MANIFEST_DIR=binary["directory"])
    with tempfile.TemporaryFile(mode="w+") as output:
        try:
            process = subprocess.run(
                [binary["executable"], "--exact", name, "--test-threads", "1", "--include-ignored"],
                cwd=binary["directory"], env=environment, stdout=output, stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            passed = process.returncode == 0
            status = "ok" if passed else f"FAILED (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            passed, status = False, f"FAILED (still running after {timeout}s, killed)"
        output.seek(0)
        text = output.read()
    if passed and "1 passed" not in text:
        passed, status = False, "FAILED (the test did not run)"
    elapsed = time.monotonic() - started
    with print_lock:
        print(f"{status:>6}  {binary['name']}::{name}  ({elapsed:.0f}s)", flush=True)
    return {"name": f"{binary['name']}::{name}", "ok": passed, "status": status, "text": text, "elapsed": elapsed}


def main():
    arguments = sys.argv[1:]
    name_filter = []
    if "--" in arguments:
        index = arguments.index("--")
        arguments, name_filter = arguments[:index], arguments[index + 1:]
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("PRISM_TEST_JOBS", "6")))
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("PRISM_TEST_TIMEOUT", "900")))
    options, cargo_args = parser.parse_known_args(arguments)

    started = time.monotonic()
    binaries = list_binaries(cargo_args)
    tests = [(binary, name) for binary in binaries for name in list_tests(binary, name_filter)]
    tests.sort(key=lambda test: slowness_rank(*test))
    if not tests:
        sys.exit("run_tests: no tests matched")
    print(f"running {len(tests)} tests of {len(binaries)} binaries, {options.jobs} at a time", flush=True)
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        results = list(pool.map(lambda t: run_test(t, options.timeout, lock), tests))

    failures = [r for r in results if not r["ok"]]
    for failure in failures:
        print(f"\n======== {failure['name']}: {failure['status']} ========")
        print(failure["text"])
    elapsed = time.monotonic() - started
    slowest = sorted(results, key=lambda r: -r["elapsed"])[:5]
    print("\nslowest: " + ", ".join(f"{r['name']} {r['elapsed']:.0f}s" for r in slowest))
    print(f"{len(results) - len(failures)} tests passed, {len(failures)} failed, of {len(results)} "
          f"in {len(binaries)} binaries, in {elapsed:.0f}s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
