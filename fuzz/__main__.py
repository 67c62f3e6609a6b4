"""``python -m fuzz [--runs N] [TARGET ...]``: fuzz every target (or the named ones) with atheris.

Each target runs in its own process (libFuzzer owns the process it fuzzes) with an RSS limit and a
per-input timeout; the totals go to ``fuzz/summary.json`` and a table on stdout. Exit status 1 if
any target found a crash, a hang or a memory blow-up (its input is under ``fuzz/findings/``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent
SUMMARY = ROOT / "summary.json"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_COVERAGE = re.compile(r"cov: (\d+) ft: (\d+)")


def run_target(name: str, runs: int, rss_limit_mb: int, timeout_s: int, max_len: int) -> dict[str, object]:
    started = time.monotonic()
    findings = ROOT / "findings" / name
    findings.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "fuzz.run_one", name,
        f"-runs={runs}", f"-rss_limit_mb={rss_limit_mb}", f"-malloc_limit_mb={rss_limit_mb}",
        f"-timeout={timeout_s}", f"-max_len={max_len}", f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
    ]  # fmt: skip
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT.parent)
    output = process.stdout + process.stderr
    done = _DONE.search(output)
    coverage = _COVERAGE.findall(output)
    result: dict[str, object] = {
        "target": name,
        "ok": process.returncode == 0 and done is not None,
        "runs": int(done.group(1)) if done else 0,
        "seconds": round(time.monotonic() - started, 1),
        "coverage": int(coverage[-1][0]) if coverage else 0,
        "features": int(coverage[-1][1]) if coverage else 0,
        "exit_code": process.returncode,
    }
    if not result["ok"]:
        result["tail"] = output[-3000:]
    else:
        for path in findings.iterdir():  # nothing found: keep the tree clean
            path.unlink()
        findings.rmdir()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target (default 10^6)")
    parser.add_argument("--rss-limit-mb", type=int, default=1024, help="memory limit per target process")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input tried")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}")
    results = []
    for name in names:
        print(f"fuzzing {name} for {args.runs} inputs …", flush=True)
        result = run_target(name, args.runs, args.rss_limit_mb, args.timeout, args.max_len)
        status = "ok" if result["ok"] else "FINDING"
        print(
            f"  {status}: {result['runs']} runs in {result['seconds']} s, coverage {result['coverage']}",
            flush=True,
        )
        if not result["ok"]:
            print(result["tail"], flush=True)
        results.append(result)
    SUMMARY.write_text(json.dumps({"runs_per_target": args.runs, "results": results}, indent=2) + "\n")
    print(f"wrote {SUMMARY}")
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
