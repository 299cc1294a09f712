"""Fuzz of `megatron serve` on loopback: N seeded mutants (bit flips, truncations, spliced headers, wrong
extensions, huge declared sizes, nested containers) of a run's real videos and two real photos, sent one at
a time to a server in its own process; every accepted job is waited for. Reports the outcomes by HTTP
status and by mutation, 5xx, refusals without a reason, answers naming a server path, files left in the
store, and the server's memory before and after (after a warm-up of the same mutants). Writes
bench/results/serve_fuzz.json.

    python bench/bench_serve_fuzz.py --run runs/demo [--uploads 5000] [--seed 0]
    python bench/bench_serve_fuzz.py --tiny-run cache/bench/tiny-run   # the tests' tiny run, built once
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import pandas as pd
from common import REPO, print_table, write_results

sys.path.insert(0, str(REPO))

from megatron_utils.core.assets import fetch  # noqa: E402
from megatron_utils.core.memory import rss_mb  # noqa: E402
from megatron_utils.serve.client import serving  # noqa: E402
from megatron_utils.serve.fuzz import fuzz, leftovers  # noqa: E402


def tiny_run(folder: Path) -> Path:
    """The tests' megatron-tiny run (tests/tiny_run.py) in `folder`, trained on first use."""
    run = folder / "run"
    if not (run / "best").is_dir():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_run import train_tiny_run

        from megatron_utils.datasets.mini import build_mini

        build_mini("tiny", folder / "mini", seed=0)
        train_tiny_run(folder / "mini", folder)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a trained run folder")
    source.add_argument("--tiny-run", type=Path, metavar="DIR",
                        help="build (once) and use the tests' tiny run")
    parser.add_argument("--uploads", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    run = args.run or tiny_run(args.tiny_run)
    index = pd.read_csv(run.parent / "index.csv" if args.tiny_run else run / "index.csv")
    chosen = pd.concat([index[index["label"] == label].head(2) for label in ("real", "fake")])
    videos = [Path(path) for path in chosen["path"]]
    files = videos + [Path(fetch("obama")), Path(fetch("face_recognition_32bit"))]
    store = Path(tempfile.mkdtemp(prefix="bench-serve-fuzz-"))
    log = REPO / "bench" / "results" / "serve-fuzz-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    options = ("--store", str(store), "--workers", str(args.workers), "--queue", str(args.uploads),
               "--max-upload-mb", "64")
    secrets = (str(store), str((run / "best").resolve()), str(run.resolve()))
    with serving(run, *options, log=log) as (base, process), httpx.Client(base_url=base, timeout=120) as http:
        warmup = fuzz(http, files, args.warmup, seed=args.seed + 1, secrets=secrets)
        before = rss_mb(process.pid)
        report = fuzz(http, files, args.uploads, seed=args.seed, secrets=secrets, job_timeout=3600)
        after = rss_mb(process.pid)
        healthy = http.get("/healthz").json()["status"] == "ok"
    left = leftovers(store, warmup.accepted + report.accepted)
    shutil.rmtree(store)

    server_errors = sum(n for outcome, n in report.outcomes.items() if outcome[0] == "5")
    row = {"uploads": report.uploads, **report.outcomes, "5xx": server_errors,
           "errors": len(report.server_errors), "no reason": len(report.unexplained),
           "path leaks": len(report.leaks), "files left": len(left), "healthz ok": healthy,
           "rss_before_mb": round(before), "rss_after_mb": round(after), "seconds": report.seconds}
    print_table([row], f"megatron serve fuzz: {run}, seed {args.seed}, {len(files)} source files")
    print_table([{"mutation": name, **counts} for name, counts in report.by_mutation.items()], "by mutation")
    for problem in report.server_errors + report.unexplained + report.leaks + left:
        print("  problem:", problem)
    write_results("serve_fuzz", {"run": str(run), "files": [str(f) for f in files], "row": row,
                                 "report": report.to_dict(), "leftovers": left})


if __name__ == "__main__":
    main()
