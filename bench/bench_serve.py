"""Load test of `megatron serve` on loopback with a trained run (the demo's by default): N uploads of the
run's test videos from C concurrent clients, each waiting for its verdict and retrying a full queue after
its Retry-After, as a well-behaved client does. Reports 5xx, lost and duplicated jobs, server memory before
and after, and latency (first upload attempt to final status) p50/p95. Optionally saves a screenshot of the
page with one verdict (headless Debian Chromium), as the README shows. Writes bench/results/serve.json.

    python bench/bench_serve.py [--run runs/demo] [--uploads 60] [--concurrency 8] [--workers 2]
                                [--queue 4] [--screenshot docs/serve.png --screenshot-video V]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from common import environment, print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_utils.core.memory import rss_mb  # noqa: E402
from megatron_utils.serve.client import CHROMIUM_FLAGS, load_test, serving  # noqa: E402


def screenshot(base: str, video: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 1200})
        page.goto(base)
        page.set_input_files("#file", str(video))
        page.wait_for_selector("#result:not([hidden])", timeout=300_000)
        page.wait_for_function("document.querySelector('#annotated-video').readyState >= 2", timeout=60_000)
        # half a second in: the first frames before the first sampled one carry no box
        page.evaluate("document.querySelector('#annotated-video').currentTime = 0.5")
        page.wait_for_function("document.querySelector('#annotated-video').seeking === false")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"screenshot: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--uploads", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--screenshot", type=Path, help="save the page with one verdict here")
    parser.add_argument("--screenshot-video", type=Path, help="the video to upload for it (default: the last "
                        "of the load test's files)")
    args = parser.parse_args()

    index = pd.read_csv(args.run / "index.csv")
    test = index[index["split"] == "test"]
    files = [Path(p) for p in pd.concat([test[test["label"] == "real"].head(4),
                                         test[test["label"] == "fake"].head(4)])["path"]]
    if not files:
        raise SystemExit(f"{args.run / 'index.csv'} lists no test videos")
    log = Path("bench/results/serve-server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    store = tempfile.mkdtemp(prefix="bench-serve-")  # a fresh store: no earlier run's jobs to resume
    options = ("--workers", str(args.workers), "--queue", str(args.queue), "--store", store)
    with serving(args.run, *options, log=log) as (base, process):
        load_test(base, files, uploads=2 * args.concurrency, concurrency=args.concurrency)  # warm-up
        before = rss_mb(process.pid)
        report = load_test(base, files, uploads=args.uploads, concurrency=args.concurrency)
        after = rss_mb(process.pid)
        if args.screenshot:
            screenshot(base, args.screenshot_video or files[-1], args.screenshot)
    row = {"uploads": report.uploads, "concurrency": report.concurrency, "workers": args.workers,
           "queue": args.queue, "done": report.done, "failed": report.failed, "lost": report.uploads -
           report.unique_ids, "5xx": sum(n for status, n in report.statuses.items() if status >= 500),
           "429 retried": report.statuses.get(429, 0), "p50_s": report.latency_p50_s,
           "p95_s": report.latency_p95_s, "jobs_per_s": round(report.uploads / report.seconds, 2),
           "rss_before_mb": round(before), "rss_after_mb": round(after)}
    print_table([row], f"megatron serve load test: {args.run} on {len(files)} test videos, {base}")
    shutil.rmtree(store)
    if report.errors:
        print("errors:", *report.errors, sep="\n  ")
    write_results("serve", {"environment": environment(), "run": str(args.run),
                                   "files": [str(f) for f in files], "row": row, "report": report.to_dict()})


if __name__ == "__main__":
    main()
