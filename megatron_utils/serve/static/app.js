"use strict";
// The page: upload with progress, poll the job, show the verdict and its files. Files are fetched with the
// API key header and shown from blob URLs, so the key never appears in a URL.
const $ = (id) => document.getElementById(id);
const HISTORY = "megatron.jobs";
const POLL_MS = 500;
let current = null; // id of the job on screen

function apiKey() { return localStorage.getItem("megatron.key") || ""; }
function headers() { return apiKey() ? { "X-API-Key": apiKey() } : {}; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

async function blobURL(url) {
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

function history() { return JSON.parse(localStorage.getItem(HISTORY) || "[]"); }

function remember(job) {
  const past = history().filter((item) => item.id !== job.id);
  past.unshift({ id: job.id, filename: job.filename, created: job.created });
  localStorage.setItem(HISTORY, JSON.stringify(past.slice(0, 50)));
}

async function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const item of history()) {
    const row = document.createElement("li");
    const open = document.createElement("button");
    open.textContent = item.filename;
    open.addEventListener("click", () => follow(item.id));
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = new Date(item.created * 1000).toLocaleString();
    row.append(open, tag);
    list.append(row);
    getJSON(`/v1/predictions/${item.id}`).then((job) => {
      const verdict = job.result ? job.result.verdict : job.status;
      tag.textContent = job.result ? `${verdict} ${job.result.fake_probability.toFixed(2)}` : verdict;
      tag.classList.add(verdict);
    }).catch(() => { tag.textContent = "expired"; });
  }
}

function upload(file) {
  $("error").hidden = true;
  $("result").hidden = true;
  $("progress-panel").hidden = false;
  $("progress-name").textContent = file.name;
  $("upload-bar").value = 0;
  $("work-bar").value = 0;
  $("stage").textContent = "uploading";
  const form = new FormData();
  form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", "/v1/predictions");
  for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) $("upload-bar").value = event.loaded / event.total;
  };
  request.onload = () => {
    let body = {};
    try { body = JSON.parse(request.responseText); } catch (error) { /* not JSON */ }
    if (request.status !== 202) {
      $("progress-panel").hidden = true;
      const wait = request.getResponseHeader("Retry-After");
      showError(`${file.name}: ${body.detail || request.statusText}` + (wait ? ` (retry in ${wait} s)` : ""));
      if (request.status === 401) $("key-panel").hidden = false;
      return;
    }
    $("upload-bar").value = 1;
    remember(body);
    renderHistory();
    follow(body.id);
  };
  request.onerror = () => { $("progress-panel").hidden = true; showError(`${file.name}: the upload failed`); };
  request.send(form);
}

async function follow(id) {
  current = id;
  $("error").hidden = true;
  while (current === id) {
    let job;
    try { job = await getJSON(`/v1/predictions/${id}`); } catch (error) {
      $("progress-panel").hidden = true;
      showError(error.message);
      return;
    }
    $("progress-panel").hidden = false;
    $("progress-name").textContent = job.filename;
    $("upload-bar").value = 1;
    $("stage").textContent = job.stage;
    $("work-bar").value = job.progress;
    if (job.status === "done" || job.status === "failed") renderHistory();
    if (job.status === "done") return showResult(job);
    if (job.status === "failed") {
      $("progress-panel").hidden = true;
      return showError(job.error);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function showResult(job) {
  const result = job.result;
  $("progress-panel").hidden = true;
  const headlines = { fake: "Likely manipulated", uncertain: "Uncertain: have a person look",
    real: "No manipulation found" };
  $("verdict").textContent = headlines[result.verdict];
  $("verdict").className = `verdict ${result.verdict}`;
  $("probability").textContent =
    `P(fake) ${result.fake_probability.toFixed(3)}. Decision: ${result.decision}.`;
  const face = result.faces.find((f) => f.track === result.face);
  $("summary").textContent = `${job.filename}: ${result.faces.length} face(s) scored; face ${result.face} ` +
    `decides, over ${face.frames_used} frame(s) in ${face.windows.length} window(s).`;
  const details = $("details");
  details.replaceChildren();
  const weights = Object.fromEntries(Object.entries(result.weights)
    .map(([part, { name, fingerprint }]) => [part, `${name} (${fingerprint})`]));
  const rows = { ...weights, ...Object.fromEntries(Object.entries(result.timings)
    .map(([name, seconds]) => [`${name} (s)`, seconds])) };
  for (const [name, value] of Object.entries(rows)) {
    const term = document.createElement("dt");
    term.textContent = name.replaceAll("_", " ");
    const text = document.createElement("dd");
    text.textContent = value;
    details.append(term, text);
  }
  for (const id of ["timeline-figure", "video-figure", "image-figure"]) $(id).hidden = true;
  $("result").hidden = false;
  const files = job.files;
  if (files["timeline.png"]) {
    $("timeline").src = await blobURL(files["timeline.png"]);
    $("timeline-figure").hidden = false;
  }
  if (files["annotated.mp4"]) {
    $("annotated-video").src = await blobURL(files["annotated.mp4"]);
    $("video-figure").hidden = false;
  }
  if (files["annotated.png"]) {
    $("annotated-image").src = await blobURL(files["annotated.png"]);
    $("image-figure").hidden = false;
  }
  await renderExplanation(result.explanation, files);
}

async function renderExplanation(explanation, files) {
  $("explanation").hidden = !explanation;
  $("heatmaps").replaceChildren();
  if (!explanation) return;
  $("attribution").src = await blobURL(files[explanation.plot]);
  for (const frame of explanation.deciding_frames) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = await blobURL(files[explanation.images[frame]]);
    image.alt = `Frame ${frame}: the face and its heat map`;
    const caption = document.createElement("figcaption");
    caption.textContent = `frame ${frame}`;
    figure.append(image, caption);
    $("heatmaps").append(figure);
  }
}

async function init() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("megatron.key", $("api-key").value);
    renderHistory();
  });
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
  try {
    const health = await getJSON("/healthz");
    $("key-panel").hidden = !health.api_key_required;
    const model = await getJSON("/v1/model");
    const limits = model.limits;
    $("limits").textContent = `Up to ${Math.round(limits.max_upload_bytes / 2 ** 20)} MB, ` +
      `${Math.round(limits.max_duration_s / 60)} min, ${limits.max_side} px per side.`;
  } catch (error) { /* without the key, the limits show once it is given */ }
  renderHistory();
}

init();
