"""`megatron serve` as users run it: the CLI starts uvicorn in its own process on loopback, with the
session's tiny run. A bounded load test (no 5xx, no lost or duplicated job, memory flat), a large upload
that must stream to disk, and a real headless Chromium that uploads a video through the page."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from tiny_run import video_of

from megatron_utils.core.memory import rss_mb
from megatron_utils.serve.client import CHROMIUM_FLAGS, Client, Refused, load_test, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_UPLOAD_MB = 64


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """(base URL, server process) of `megatron serve --run RUN` with 2 workers and a queue of 4."""
    folder = tmp_path_factory.mktemp("serve-live")
    with serving(tiny_run[0], "--store", str(folder / "store"), "--workers", "2", "--queue", "4",
                 "--max-upload-mb", str(MAX_UPLOAD_MB), "--device", "cpu", log=folder / "server.log"
                 ) as (base, process):
        yield base, process


@pytest.fixture(scope="module")
def explaining_server(tiny_run, tmp_path_factory):
    """(base URL, server process) of `megatron serve --run RUN --explain`."""
    folder = tmp_path_factory.mktemp("serve-explain")
    with serving(tiny_run[0], "--store", str(folder / "store"), "--explain", "--device", "cpu",
                 log=folder / "server.log") as (base, process):
        yield base, process


def test_load_no_5xx_no_lost_or_duplicated_job_and_flat_memory(server, tiny_run, asset, tmp_path):
    base, process = server
    files = [Path(video_of(tiny_run[1], label)) for label in ("real", "fake")] + [Path(asset("obama"))]
    # Warm up with the same load: the first jobs in each thread allocate its buffers and malloc arena.
    load_test(base, files, uploads=16, concurrency=8)
    before = rss_mb(process.pid)
    report = load_test(base, files, uploads=60, concurrency=8)
    after = rss_mb(process.pid)
    print(json.dumps({**report.to_dict(), "rss_before_mb": round(before), "rss_after_mb": round(after)}))
    assert report.errors == [] and not any(status >= 500 for status in report.statuses)
    assert report.done == 60 and report.failed == 0 and report.unique_ids == 60
    # 8 clients against 2 workers and 4 places in the queue: some submissions met a full queue, waited
    # for their Retry-After and got in; none became a lost or a second job.
    assert report.statuses[202] == 60 and report.statuses.get(429, 0) > 0
    assert report.latency_p95_s >= report.latency_p50_s > 0
    assert after - before < 50, f"RSS grew from {before:.0f} to {after:.0f} MB over 60 jobs"
    assert httpx.get(f"{base}/healthz").json()["jobs"]["done"] >= 68


def test_a_large_upload_streams_to_disk_and_an_oversized_one_stops_at_the_limit(server, tmp_path):
    base, process = server
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:  # 48 MB of non-media bytes: received in full, then refused by type
        for _ in range(48):
            handle.write(os.urandom(2**20))
    before = rss_mb(process.pid)
    client = Client(base)
    with pytest.raises(Refused) as refused:
        client.submit(big)
    assert refused.value.status == 415
    grown = rss_mb(process.pid) - before
    assert grown < 24, f"a 48 MB upload grew the server by {grown:.0f} MB: it was held in memory"

    def chunks():  # no Content-Length: the limit must stop the stream itself
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.mp4\"\r\n\r\n"
        for _ in range(MAX_UPLOAD_MB + 8):
            yield b"\x00" * 2**20
    response = httpx.post(f"{base}/v1/predictions", content=chunks(), timeout=60,
                          headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "exceeds the limit" in response.json()["detail"]
    assert httpx.get(f"{base}/healthz").status_code == 200


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it as root)")
def test_the_page_in_headless_chromium(explaining_server, tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    base, _ = explaining_server
    video = Path(video_of(tiny_run[1], "fake"))
    screenshot = Path(os.environ.get("MEGATRON_SCREENSHOT", tmp_path / "serve.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(base)
            page.set_input_files("#file", str(video))
            page.wait_for_selector("#result:not([hidden])", timeout=90_000)
            verdict = page.inner_text("#verdict")
            assert verdict in ("Likely manipulated", "Uncertain: have a person look", "No manipulation found")
            assert "of real validation videos" in page.inner_text("#probability")  # what the threshold means
            page.wait_for_function("document.querySelector('#timeline').naturalWidth > 0", timeout=20_000)
            page.wait_for_function("document.querySelector('#annotated-video').readyState >= 1",
                                   timeout=20_000)
            assert page.evaluate("document.querySelector('#annotated-video').videoWidth") > 0
            # the explanation: the attribution plot and the deciding frames' heat maps, all loaded
            page.wait_for_function("[...document.querySelectorAll('#explanation img')].length == 5 && "
                                   "[...document.querySelectorAll('#explanation img')]"
                                   ".every((image) => image.naturalWidth > 0)", timeout=20_000)
            assert page.inner_text("#heatmaps").count("frame ") == 4
            assert page.locator("#history li").count() == 1
            assert video.name in page.inner_text("#history")
            page.screenshot(path=str(screenshot), full_page=True)
            # The result in a phone-sized window, weights and timings open: nothing wider than the screen.
            page.set_viewport_size({"width": 390, "height": 844})
            page.click("details summary")
            assert page.is_visible("#details dd")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            right = page.evaluate("document.querySelector('#annotated-video').getBoundingClientRect().right")
            assert right <= 390
            assert page.is_visible("label[for=file]")
            assert errors == []
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
