"""`megatron serve` through its API (FastAPI's TestClient, in process), with the session's tiny run: real
uploads scored as `predict` scores them, every endpoint, the limits, and hostile uploads each refused with a
4xx and its reason while the service stays healthy."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import uuid
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tiny_run import video_of

from megatron_utils.cli import main
from megatron_utils.inference.predict import Detector
from megatron_utils.models.backbones import folder_fingerprint
from megatron_utils.preprocessing.video import Encoded, MediaError, probe
from megatron_utils.serve import ServeConfig
from megatron_utils.serve.app import create_app
from megatron_utils.serve.fuzz import fuzz, leftovers
from megatron_utils.serve.store import JOB_ID, Job, JobStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_UPLOAD = 4 * 2**20
BOUNDARY = "megatron-test-boundary"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector(tiny_run):
    return Detector.from_pretrained(tiny_run[0], clips_per_video=2)


def serve(detector, store: Path, **options) -> TestClient:
    config = ServeConfig(run="unused: the predictor is given", store=store, max_upload_bytes=MAX_UPLOAD,
                         **options)
    return TestClient(create_app(config, predictor=detector))


@pytest.fixture(scope="module")
def client(detector, tmp_path_factory):
    with serve(detector, tmp_path_factory.mktemp("serve")) as client:
        yield client


def upload(client: TestClient, name: str, data: bytes, content_type: str = "application/octet-stream",
           **kwargs):
    return client.post("/v1/predictions", files={"file": (name, data, content_type)}, **kwargs)


def finished(client: TestClient, job_id: str, timeout: float = 120.0, **kwargs) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/predictions/{job_id}", **kwargs).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_a_video_upload_is_scored_as_predict_scores_the_file(client, detector, tiny_run):
    path = Path(video_of(tiny_run[1], "fake"))
    response = upload(client, "suspect clip.mp4", path.read_bytes())
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/predictions/{created['id']}"
    assert created["status"] == "queued" and created["upload"]["kind"] == "video"
    assert created["upload"]["bytes"] == path.stat().st_size

    job = finished(client, created["id"])
    assert job["status"] == "done", job["error"]
    expected = detector.predict(path)
    result = job["result"]
    assert result["path"] == "suspect clip.mp4"  # the client's name, never the server's path
    assert result["fake_probability"] == pytest.approx(expected.fake_probability, abs=1e-6)
    assert result["verdict"] == expected.verdict and result["threshold"] == pytest.approx(detector.threshold)
    assert [w["probability"] for w in result["faces"][0]["windows"]] == pytest.approx(
        [w.probability for w in expected.faces[0].windows], abs=1e-6)
    assert result["weights"] == client.app.state.jobs.weights and result["timings"]["total"] > 0

    assert set(job["files"]) == {"annotated.mp4", "timeline.png"}
    video = client.get(job["files"]["annotated.mp4"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    info, source = probe(Encoded(video.content, "annotated.mp4")), probe(path)
    assert info.codec == "h264" and info.frame_count == source.frame_count
    timeline = client.get(job["files"]["timeline.png"])
    assert timeline.content.startswith(PNG_SIGNATURE)


def test_explained_jobs_serve_the_attribution_plot_and_heat_maps_under_public_names(detector, tiny_run,
                                                                                     tmp_path):
    path = Path(video_of(tiny_run[1], "fake"))
    with serve(detector, tmp_path, workers=2, explain=True) as client:
        ids = [upload(client, f"clip {n}.mp4", path.read_bytes()).json()["id"] for n in range(2)]
        jobs = [finished(client, job_id) for job_id in ids]  # two at once: Grad-CAM's hooks stay private
        for job in jobs:
            assert job["status"] == "done", job["error"]
            explanation = job["result"]["explanation"]
            deciding = explanation["deciding_frames"]
            assert len(deciding) == 4 and explanation["folder"] == "" and explanation["heatmaps"] == ""
            assert explanation["images"] == {str(f): f"heatmap-{n}.png" for n, f in enumerate(deciding, 1)}
            assert set(job["files"]) == {"annotated.mp4", "timeline.png", "attribution.png",
                                         *explanation["images"].values()}
            for name in ("attribution.png", "heatmap-1.png"):
                assert client.get(job["files"][name]).content.startswith(PNG_SIGNATURE)
            assert str(tmp_path) not in json.dumps(job)  # no server path leaks into the result
        # Concurrent explanations agree with one made alone.
        alone = detector.predict(path, explain=tmp_path / "alone").explanation
        for job in jobs:
            assert job["result"]["explanation"]["attribution"] == pytest.approx(alone.attribution, abs=1e-5)
            assert job["result"]["explanation"]["heat_peak"] == pytest.approx(alone.heat_peak, abs=1e-5)
    with serve(detector, tmp_path / "plain") as client:
        job = finished(client, upload(client, "clip.mp4", path.read_bytes()).json()["id"])
        assert job["result"]["explanation"] is None and "attribution.png" not in job["files"]


def test_a_photo_is_sniffed_by_content_whatever_its_name_and_type(client, detector, asset):
    data = Path(asset("obama")).read_bytes()
    response = upload(client, "looks-like-a-video.mp4", data, "video/mp4")
    assert response.status_code == 202, response.text
    width, height = Image.open(asset("obama")).size
    assert response.json()["upload"] == {"kind": "image", "format": "JPEG", "width": width, "height": height,
                                         "bytes": len(data), "duration_s": None, "fps": None}
    job = finished(client, response.json()["id"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["media"] == "image"
    assert job["result"]["fake_probability"] == pytest.approx(
        detector.predict(asset("obama")).fake_probability, abs=1e-6)
    assert set(job["files"]) == {"annotated.png"}
    assert client.get(job["files"]["annotated.png"]).content.startswith(PNG_SIGNATURE)


def test_a_video_without_a_face_fails_with_the_reason_and_the_client_name(client, asset):
    response = upload(client, "landscape.mp4", Path(asset("no_face_video")).read_bytes())
    assert response.status_code == 202, response.text
    job = finished(client, response.json()["id"])
    assert job["status"] == "failed" and job["result"] is None and job["files"] == {}
    assert job["error"].startswith("landscape.mp4: ") and "no face" in job["error"]
    assert "/" not in job["error"].split(":")[0]


def test_model_health_page_docs_and_unknown_jobs(client, detector):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["api_key_required"] is False
    model = client.get("/v1/model").json()
    assert model["threshold"] == pytest.approx(detector.threshold)
    checkpoint = Path(detector.checkpoint)
    assert model["weights"]["checkpoint"] == {"name": f"{checkpoint.resolve().parent.name}/best",
                                              "fingerprint": folder_fingerprint(checkpoint)}
    assert model["weights"]["rgb_backbone"] == {"name": detector.embedder.rgb.name,
                                                "fingerprint": detector.embedder.rgb.fingerprint}
    assert model["preprocessing"]["frames"]["frames_per_clip"] == 8
    assert model["model_card"] and "threshold" in model["model_card"].lower()
    assert model["limits"]["max_upload_bytes"] == MAX_UPLOAD
    page = client.get("/")
    assert page.status_code == 200 and "Drop a video or image here" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    for url in ("/v1/predictions/0123456789abcdef0123456789abcdef", "/v1/predictions/not-an-id/files/x.mp4",
                "/v1/predictions/..%2F..%2Fetc%2Fpasswd"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert url.endswith("passwd") or "no job" in response.json()["detail"]


def test_no_response_names_a_server_path(client, detector, tiny_run, asset):
    """Every kind of answer a client can get, scanned for the checkpoint's and the store's paths (and the
    run's folder, whose index.csv the model card names)."""
    checkpoint = Path(detector.checkpoint)
    secrets = {str(checkpoint.absolute()), str(checkpoint.resolve()), str(tiny_run[0].resolve().parent),
               str(client.app.state.jobs.folder), str(client.app.state.jobs.folder.resolve())}
    video = Path(video_of(tiny_run[1], "fake")).read_bytes()
    done = finished(client, upload(client, "a.mp4", video).json()["id"])
    failed = finished(client, upload(client, "b.mp4", Path(asset("no_face_video")).read_bytes()).json()["id"])
    assert (done["status"], failed["status"]) == ("done", "failed")
    answers = [client.get(url) for url in ("/", "/healthz", "/v1/model", "/openapi.json", "/docs",
                                           "/static/app.js", f"/v1/predictions/{done['id']}",
                                           f"/v1/predictions/{failed['id']}", done["files"]["annotated.mp4"],
                                           f"/v1/predictions/{done['id']}/files/nope.png",
                                           "/v1/predictions/0123456789abcdef0123456789abcdef")]
    answers += [upload(client, "c.mp4", video[: len(video) // 2]), upload(client, "d.mp4", b"text " * 99)]
    assert [a.status_code for a in answers[-4:]] == [404, 404, 422, 415]
    for answer in answers:
        text = answer.content.decode("latin-1") + str(answer.headers)
        leaked = [secret for secret in secrets if secret in text]
        assert not leaked, (answer.url, leaked)
    assert "sha256:" in answers[2].json()["weights"]["checkpoint"]["fingerprint"]


# Hostile uploads --------------------------------------------------------------------------------------
def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body from (field, filename or None, content) parts."""
    body = b""
    for field, filename, content in parts:
        named = f'; filename="{filename}"' if filename is not None else ""
        disposition = f'form-data; name="{field}"{named}'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def png_bomb(side: int) -> bytes:
    """A 1-bit PNG declaring side x side pixels, all zero: a few kB that decode to side^2 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    rows = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def declared_hours_video(path: Path) -> bytes:
    """Three frames five hours apart: a 5 kB MP4 whose header declares 15 hours."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(1, 5 * 3600))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8))))
        container.mux(stream.encode(None))
    return path.read_bytes()


def disguised(magic: bytes, path: Path) -> bytes:
    """An MPEG program stream (a real 64x64 video) behind another format's magic bytes: sniffed as that
    format, while FFmpeg left to probe reads the MPEG video behind it."""
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg1video", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for shade in range(10):
            frame = np.full((64, 64, 3), 20 * shade, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame)))
        container.mux(stream.encode(None))
    data = magic + path.read_bytes()
    path.write_bytes(data)
    return data


def test_an_upload_is_read_only_as_the_type_its_content_names(client, tmp_path):
    for magic, demuxer, suffix in ((b"GIF89a" + bytes(10), "gif", ".gif"),
                                   (b"\x1a\x45\xdf\xa3" + bytes(8), "matroska", ".mkv")):
        path = tmp_path / f"disguised{suffix}"
        data = disguised(magic, tmp_path / "disguised.bin")
        with av.open(str(tmp_path / "disguised.bin")) as probed:  # what probing would have let through
            assert probed.format.name == "mpeg" and probed.streams.video
        response = upload(client, "clip.mpg", data)
        assert response.status_code == 422, response.text
        assert f"cannot be read as the {demuxer}" in response.json()["detail"]
        path.write_bytes(data)  # the pipeline, too, reads a file only as what its name says
        with pytest.raises(MediaError, match="not a readable video"):
            probe(path)


def image_bytes(size: tuple[int, int], format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 90, 80)).save(buffer, format=format)
    return buffer.getvalue()


def wav_bytes() -> bytes:
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(16000)
        sound.writeframes(np.zeros(16000, np.int16).tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile(tiny_run, asset, tmp_path_factory):
    """name -> (request body, its headers, expected status, words the reason contains)."""
    folder = tmp_path_factory.mktemp("hostile")
    video = Path(video_of(tiny_run[1], "real")).read_bytes()
    photo = Path(asset("obama")).read_bytes()
    form = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

    def file_part(data: bytes, name: str = "upload.mp4") -> tuple[bytes, dict]:
        return multipart(("file", name, data)), form

    codec = video.index(b"avc1", video.index(b"stsd"))  # the video track's codec, in its sample description

    cases = {
        "empty file": (*file_part(b""), 400, "empty"),
        "unknown video codec": (*file_part(video[:codec] + b"zzzz" + video[codec + 4:]), 422,
                                "codec is unknown"),
        "text file": (*file_part(b"just some text, not a video\n" * 40), 415, "not a video or image"),
        "random bytes": (*file_part(np.random.default_rng(0).bytes(50_000)), 415, "not a video or image"),
        "truncated MP4": (*file_part(video[: len(video) // 2]), 422, "truncated or corrupt"),
        "truncated JPEG": (*file_part(photo[: len(photo) // 3], "photo.jpg"), 422, "truncated or corrupt"),
        "huge declared size": (multipart(("file", "big.mp4", b"x" * 100)),
                               {**form, "content-length": str(50 * 2**30)}, 413, "exceeds the limit"),
        "body over the limit": (*file_part(b"\x00" * (MAX_UPLOAD + 1)), 413, "exceeds the limit"),
        "PNG decompression bomb": (*file_part(png_bomb(20_000), "bomb.png"), 413, "too large"),
        "image wider than the limit": (*file_part(image_bytes((5000, 300)), "wide.png"), 413,
                                       "4096 pixels per side"),
        "image too small for a face": (*file_part(image_bytes((16, 16)), "tiny.png"), 422, "too small"),
        "10-hour video header": (*file_part(declared_hours_video(folder / "long.mp4")), 413,
                                 "as its header declares"),
        "audio only (WAV)": (*file_part(wav_bytes(), "voice.mp4"), 415, "not a video or image"),
        "SVG with a script": (*file_part(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script>'
                                         b"</svg>", "x.svg"), 415, "not a video or image"),
        "PDF": (*file_part(b"%PDF-1.4\n" + b"0" * 2000, "doc.pdf"), 415, "not a video or image"),
        "ZIP archive": (*file_part(b"PK\x03\x04" + b"\x00" * 2000, "clip.zip"), 415, "not a video or image"),
        "executable": (*file_part(Path("/bin/sh").read_bytes()[:20_000], "clip.mp4"), 415,
                       "not a video or image"),
        "path-traversal file name": (*file_part(video, "../../etc/cron.d/evil.mp4"), 400, "not a plain name"),
        "backslash file name": (*file_part(video, "..\\..\\evil.mp4"), 400, "not a plain name"),
        "control characters in the name": (*file_part(video, "evil\x1b[2J.mp4"), 400, "not a plain name"),
        "over-long file name": (*file_part(video, "a" * 300 + ".mp4"), 400, "longer than"),
        "wrong content type (JSON)": (b'{"file": "clip.mp4"}', {"content-type": "application/json"}, 415,
                                      "multipart/form-data"),
        "no content type": (video, {}, 415, "multipart/form-data"),
        "multipart without a boundary": (multipart(("file", "a.mp4", video)),
                                         {"content-type": "multipart/form-data"}, 400, "boundary"),
        "malformed multipart": (b"--" + BOUNDARY.encode() + b"\r\ngarbage without headers", form, 400,
                                "multipart"),
        "no file part": (multipart(("note", None, b"hello")), form, 400, "no file"),
        "file in another field": (multipart(("video", "a.mp4", video)), form, 400, "field 'file'"),
        "two files": (multipart(("file", "a.mp4", video), ("file", "b.mp4", video)), form, 400,
                      "more than one file"),
    }
    return cases


def test_hostile_uploads_get_a_4xx_with_the_reason_and_the_service_stays_healthy(client, hostile, tiny_run):
    jobs_before = set(client.app.state.jobs.jobs)
    outcomes = {}
    for name, (body, headers, status, reason) in hostile.items():
        response = client.post("/v1/predictions", content=body, headers=headers)
        detail = response.json().get("detail", "")
        outcomes[name] = (response.status_code, detail)
        assert response.status_code == status and reason in detail, (name, response.status_code, detail)
        assert str(client.app.state.jobs.folder) not in detail  # never the server's paths
    assert len(outcomes) >= 20
    print("\n| upload | status | reason |\n|---|---|---|")
    print("\n".join(f"| {name} | {status} | {detail} |" for name, (status, detail) in outcomes.items()))
    # No job and no folder was kept for a refused upload, and the service still scores.
    assert set(client.app.state.jobs.jobs) == jobs_before
    assert {folder.name for folder in client.app.state.jobs.folder.iterdir() if JOB_ID.match(folder.name)
            } == jobs_before
    good = upload(client, "after.mp4", Path(video_of(tiny_run[1], "fake")).read_bytes())
    assert good.status_code == 202
    assert finished(client, good.json()["id"])["status"] == "done"


def test_fuzzed_uploads_get_a_4xx_with_a_reason_or_a_finished_job_and_leave_nothing(detector, tiny_run, asset,
                                                                                   tmp_path):
    """The short run of bench/bench_serve_fuzz.py: 120 seeded mutants of real videos and photos."""
    files = [Path(video_of(tiny_run[1], label)) for label in ("real", "fake")] + [
        Path(asset("obama")), Path(asset("face_recognition_32bit"))]
    with serve(detector, tmp_path, queue_size=200, annotate=False) as client:
        secrets = (str(tmp_path), str(Path(detector.checkpoint).resolve()))
        report = fuzz(client, files, uploads=120, seed=0, secrets=secrets, job_timeout=120)
        print(json.dumps(report.outcomes), json.dumps(report.by_mutation), f"{report.seconds} s")
        assert report.server_errors == [] and report.unexplained == [] and report.leaks == []
        assert set(report.outcomes) <= {"202 done", "202 failed", "400", "413", "415", "422"}
        assert sum(report.outcomes.values()) == 120
        # both sides exercised: mutants scored, and mutants refused for several reasons
        assert report.outcomes.get("202 done", 0) >= 5 and len(set(report.outcomes) - {"202 done"}) >= 3
        assert leftovers(tmp_path, report.accepted) == []
        assert client.get("/healthz").json()["status"] == "ok"
        after = upload(client, "after.mp4", files[1].read_bytes()).json()["id"]
        assert finished(client, after)["status"] == "done"


# Limits, keys, lifetime -------------------------------------------------------------------------------
class Gated:
    """The real detector, made to wait for a gate before scoring: jobs pile up while the gate is shut."""

    def __init__(self, detector: Detector):
        self.detector, self.gate = detector, threading.Event()

    def __getattr__(self, name: str):  # the detector's threshold, weights and settings
        return getattr(self.detector, name)

    def predict(self, media, name=None, progress=None, explain=None):
        self.gate.wait(60)
        return self.detector.predict(media, name, progress, explain)


def test_a_full_queue_answers_429_with_retry_after_and_loses_no_job(detector, tiny_run, tmp_path):
    gated = Gated(detector)
    data = Path(video_of(tiny_run[1], "real")).read_bytes()
    with serve(gated, tmp_path, workers=1, queue_size=2) as client:
        accepted = [upload(client, "0.mp4", data)]
        deadline = time.monotonic() + 10  # the worker takes it (on a busy machine, not at once); two wait
        while client.get("/healthz").json()["jobs"]["running"] != 1:
            assert time.monotonic() < deadline, "the worker never took the first job"
            time.sleep(0.05)
        accepted += [upload(client, f"{n}.mp4", data) for n in (1, 2)]
        assert [r.status_code for r in accepted] == [202] * 3
        refused = upload(client, "3.mp4", data)
        assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        jobs = [finished(client, r.json()["id"]) for r in accepted]
        assert [job["status"] for job in jobs] == ["done"] * 3
        assert len({job["id"] for job in jobs}) == 3
        assert upload(client, "4.mp4", data).status_code == 202  # room again


def test_an_api_key_guards_the_api_but_not_the_page(detector, tiny_run, tmp_path):
    with serve(detector, tmp_path, api_key="s3cret") as client:
        assert client.get("/healthz").json()["api_key_required"] is True
        assert client.get("/").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = client.get("/v1/model", headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["detail"]
            assert upload(client, "a.mp4", b"x", headers=headers).status_code == 401
        key = {"X-API-Key": "s3cret"}
        response = upload(client, "a.jpg", image_bytes((64, 64), "JPEG"), headers=key)
        assert response.status_code == 202
        assert client.get(f"/v1/predictions/{response.json()['id']}").status_code == 401
        assert finished(client, response.json()["id"], headers=key)["status"] in ("done", "failed")


def test_results_expire_after_their_lifetime(detector, asset, tmp_path):
    with serve(detector, tmp_path, result_ttl_s=60) as client:
        job = finished(client, upload(client, "a.jpg", Path(asset("obama")).read_bytes()).json()["id"])
        folder = tmp_path / job["id"]
        assert (folder / "annotated.png").is_file()
        assert not list(folder.glob("upload*"))  # the upload itself is deleted once scored
        assert client.app.state.jobs.expire(now=job["finished"] + 59) == []
        expired = client.app.state.jobs.expire(now=job["finished"] + 61)
        assert expired == [job["id"]] and not folder.exists()
        assert client.get(f"/v1/predictions/{job['id']}").status_code == 404


def test_over_the_store_cap_old_results_go_early_then_uploads_wait(detector, asset, tmp_path):
    gated, data = Gated(detector), Path(asset("obama")).read_bytes()
    gated.gate.set()
    with serve(gated, tmp_path, max_store_bytes=len(data)) as client:
        first = finished(client, upload(client, "a.jpg", data).json()["id"])
        assert (tmp_path / first["id"] / "annotated.png").stat().st_size >= len(data)  # over the cap
        gated.gate.clear()
        second = upload(client, "b.jpg", data)  # room made by deleting the finished job early
        assert second.status_code == 202 and client.get(f"/v1/predictions/{first['id']}").status_code == 404
        full = upload(client, "c.jpg", data)  # the second's upload alone fills the store, and it is not done
        assert full.status_code == 503 and "job store is full" in full.json()["detail"]
        assert int(full.headers["retry-after"]) >= 1
        gated.gate.set()
        assert finished(client, second.json()["id"])["status"] == "done"
        assert upload(client, "d.jpg", data).status_code == 202


def test_a_store_serves_one_service_and_a_job_that_keeps_crashing_it_fails(detector, asset, tmp_path):
    store = JobStore(tmp_path)
    with pytest.raises(ValueError, match="in use by another"):
        JobStore(tmp_path)
    ids = [uuid.uuid4().hex for _ in range(2)]
    jobs = [Job(job_id, tmp_path / job_id, filename=f"{n}.jpg", created=n) for n, job_id in enumerate(ids)]
    for attempts, job in zip((1, 3), jobs, strict=True):  # killed once, and killed three times, while running
        job.folder.mkdir()
        job.media_path = job.folder / "upload.jpg"
        shutil.copy(asset("obama"), job.media_path)
        (job.folder / "annotated.png").write_bytes(b"half-written")
        store.add(job)
        job.status, job.attempts = "running", attempts
        store.start(job)
    store.close()
    (tmp_path / uuid.uuid4().hex).mkdir()  # an upload cut short by the crash: no job
    with serve(detector, tmp_path) as client:
        again, given_up = (finished(client, job.id) for job in jobs)
        assert (again["status"], again["attempts"]) == ("done", 2)
        assert (given_up["status"], given_up["attempts"]) == ("failed", 3)
        assert given_up["error"] == "1.jpg: the service stopped while scoring it 3 times"
        assert {path.name for path in tmp_path.iterdir() if path.is_dir()} == {job.id for job in jobs}
        assert not (tmp_path / jobs[1].id / "upload.jpg").exists()


def test_the_default_store_is_in_the_run_folder_never_in_a_checkpoint(tiny_run):
    run = tiny_run[0]
    for given in ({"run": run}, {"run": run / "best"}, {"run": run, "checkpoint": "best"}):
        assert ServeConfig(**given).store_folder == run / "serve-store"
    assert ServeConfig(run=run, store="elsewhere").store_folder == Path("elsewhere")
    with pytest.raises(ValueError, match="give --store"):
        _ = ServeConfig(run="owner/a-model-on-the-hub").store_folder


def test_serving_beyond_loopback_needs_a_key_or_insecure(tiny_run, capsys):
    with pytest.raises(ValueError, match="without an API key"):
        ServeConfig(run=".", host="0.0.0.0").check_exposure()
    ServeConfig(run=".", host="0.0.0.0", api_key="k").check_exposure()
    ServeConfig(run=".", host="0.0.0.0", insecure=True).check_exposure()
    ServeConfig(run=".", host="::1").check_exposure()
    assert main(["serve", "--run", str(tiny_run[0]), "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
