"""`megatron serve --store` killed with SIGKILL and restarted on the same store, as an operator's crash would
go: first with jobs queued behind one running, then in the middle of a result's write. Every accepted job
id must end "done", with the result an uninterrupted server gives for the same file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from megatron_utils.serve.client import Client, free_port, serving
from megatron_utils.serve.store import DB_FILE, FAULT_ENV

KEY = "correct horse battery staple"


def rounded(value):
    """`value` with floats to 6 decimals and the timings left out: what must not change across a crash."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items() if key != "timings"}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return round(value, 6) if isinstance(value, float) else value


def stored(store: Path) -> dict[str, tuple[str, int, bool]]:
    """id -> (status, attempts, has a result), read from the store's database as the last process left it."""
    with sqlite3.connect(f"file:{store / DB_FILE}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, status, attempts, result IS NOT NULL FROM jobs").fetchall()
    return {job_id: (status, attempts, bool(result)) for job_id, status, attempts, result in rows}


def test_a_killed_server_loses_no_job_and_finishes_each_as_an_uninterrupted_one_would(tiny_run, tmp_path):
    videos = [Path(path) for path in tiny_run[1]["path"].head(4)]
    store, log = tmp_path / "store", tmp_path / "server.log"
    (tmp_path / "key").write_text(KEY + "\n")
    options = ("--store", str(store), "--workers", "1", "--device", "cpu",
               "--api-key-file", str(tmp_path / "key"))
    deadline = time.monotonic() + 60

    # 1. Four jobs accepted; the first one stalls in the middle of scoring (hook), the others wait. SIGKILL.
    with serving(tiny_run[0], *options, log=log, env={FAULT_ENV: "hang:forward"}) as (base, process):
        assert httpx.get(f"{base}/v1/model").status_code == 401  # the key from the file is required
        client = Client(base, api_key=KEY)
        ids = [client.submit(video)["id"] for video in videos]
        while client.job(ids[0])["stage"] != "depth maps, embeddings and the verdict":
            assert time.monotonic() < deadline, "the first job never reached the forward pass"
            time.sleep(0.1)
        assert [client.job(job_id)["status"] for job_id in ids] == ["running", "queued", "queued", "queued"]
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        client.close()
    waiting = {job_id: ("queued", 0, False) for job_id in ids[1:]}
    assert stored(store) == {ids[0]: ("running", 1, False)} | waiting

    # 2. Restarted on the store, it resumes the jobs and is killed in the middle of the first result's write
    # (after its UPDATE, before the COMMIT): nothing of that write may survive.
    command = [sys.executable, "-m", "megatron_utils", "serve", "--run", str(tiny_run[0]), "--port",
               str(free_port()), *options]
    with open(log, "a") as output:
        crashed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=120,
                                 env={**os.environ, FAULT_ENV: "kill:result-write"})
    assert crashed.returncode == -signal.SIGKILL
    assert stored(store) == {ids[0]: ("running", 2, False)} | waiting

    # 3. Restarted once more, untouched: every id ends done; then the same files, uploaded afresh to this
    # uninterrupted server, give the same results.
    with serving(tiny_run[0], *options, log=log) as (base, _):
        client = Client(base, api_key=KEY)
        recovered = [client.wait(job_id, timeout=120) for job_id in ids]
        assert [job["status"] for job in recovered] == ["done"] * 4, [job["error"] for job in recovered]
        assert [job["attempts"] for job in recovered] == [3, 1, 1, 1]
        fresh = [client.wait(client.submit(video)["id"], timeout=120) for video in videos]
        for job, again in zip(recovered, fresh, strict=True):
            assert rounded(job["result"]) == rounded(again["result"])
            assert set(job["files"]) == set(again["files"]) == {"annotated.mp4", "timeline.png"}
            assert client.http.get(job["files"]["annotated.mp4"]).content[4:8] == b"ftyp"
        client.close()
    assert not list(store.glob("*/upload*")), "an upload outlived its job"


def test_the_api_key_comes_from_the_environment_or_a_file_never_the_command_line(tiny_run, tmp_path, capsys):
    from megatron_utils.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--run", str(tiny_run[0]), "--api-key", "s3cret"])
    assert "visible to every user" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--run", str(tiny_run[0]), "--api-key-file", str(tmp_path / "empty")]) == 2
    assert "the file is empty" in capsys.readouterr().err
