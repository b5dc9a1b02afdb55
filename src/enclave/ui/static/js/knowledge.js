// The knowledge page: bases, uploads with progress, documents, chunks and search.
//
// Each file is uploaded on its own XMLHttpRequest (fetch cannot report upload
// progress), then its document is polled until ingestion ends: indexed, or
// failed with the reason. An audio file (shown where some model transcribes) is
// sent to /v1/audio/transcriptions and its transcript uploaded as a .txt document.

import { api, upload } from "./api.js";
import { announce, byId, formatNumber, formatTime, h, headingText, pagesText, replaceChildren, row } from "./dom.js";
import { initLayout } from "./layout.js";

const POLL_MS = 1000;
const FINAL = new Set(["indexed", "failed"]);

const ui = {
  bases: byId("bases"),
  createForm: byId("create-base"),
  newName: byId("new-base-name"),
  createStatus: byId("create-status"),
  view: byId("base-view"),
  title: byId("base-title"),
  description: byId("base-description"),
  dropZone: byId("drop-zone"),
  files: byId("choose-files"),
  audio: byId("audio-upload"),
  audioFiles: byId("choose-audio"),
  uploads: byId("uploads"),
  documents: byId("documents-body"),
  documentsEmpty: byId("documents-empty"),
  chunks: byId("chunks-view"),
  chunksTitle: byId("chunks-title"),
  chunksList: byId("chunks-list"),
  chunksClose: byId("chunks-close"),
  queryForm: byId("query-form"),
  query: byId("query"),
  results: byId("results"),
  status: byId("knowledge-status"),
};

const state = { bases: [], selected: null, transcriber: null };

function base(path = "") {
  return `/api/knowledge/${encodeURIComponent(state.selected)}${path}`;
}

// -- bases ---------------------------------------------------------------------

async function loadBases() {
  try {
    state.bases = (await api("/api/knowledge")).data;
  } catch (error) {
    announce(ui.status, error.message);
    ui.createForm.hidden = true;
    return;
  }
  renderBases();
}

function renderBases() {
  replaceChildren(
    ui.bases,
    state.bases.map((info) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: ["base-button", info.name === state.selected && "selected"],
            "aria-pressed": info.name === state.selected ? "true" : "false",
            onclick: () => selectBase(info.name),
          },
          h("span", { class: "base-name" }, info.name),
          // Not part of the button's name: the base is "handbook", not "handbook 3 documents".
          h("span", { class: "base-meta", "aria-hidden": "true" }, `${formatNumber(info.documents ?? 0)} documents`),
        ),
      ),
    ),
  );
  if (!state.bases.length) ui.bases.append(h("li", { class: "hint" }, "No knowledge bases yet."));
}

async function selectBase(name) {
  state.selected = name;
  const url = new URL(window.location.href);
  url.searchParams.set("kb", name);
  history.replaceState(null, "", url);
  renderBases();
  const info = state.bases.find((item) => item.name === name);
  ui.title.textContent = name;
  ui.description.textContent = info
    ? [info.description, `classification: ${info.classification}`].filter(Boolean).join(" · ")
    : "";
  ui.view.hidden = false;
  replaceChildren(ui.uploads);
  replaceChildren(ui.results);
  ui.chunks.hidden = true;
  await loadDocuments();
}

async function createBase(event) {
  event.preventDefault();
  const name = ui.newName.value.trim();
  if (!name) return;
  announce(ui.createStatus, "");
  try {
    await api("/api/knowledge", { method: "POST", json: { name } });
  } catch (error) {
    announce(ui.createStatus, error.message);
    return;
  }
  ui.newName.value = "";
  await loadBases();
  await selectBase(name);
}

// -- documents -------------------------------------------------------------------

function statusText(document) {
  return document.status === "failed" ? `failed: ${document.reason || "unknown reason"}` : document.status;
}

async function loadDocuments() {
  if (!state.selected) return;
  let documents;
  try {
    documents = (await api(base("/documents"))).data;
  } catch (error) {
    announce(ui.status, error.message);
    return;
  }
  replaceChildren(
    ui.documents,
    documents.map((document) =>
      row([
        document.name,
        h("span", { class: `doc-status status-${document.status}` }, statusText(document)),
        document.pages == null ? "" : formatNumber(document.pages),
        formatNumber(document.chunks ?? 0),
        formatTime(document.indexed_at || document.updated_at),
        document.status === "failed"
          ? h(
              "button",
              {
                type: "button",
                class: "small danger",
                "aria-label": `Remove ${document.name}`,
                onclick: () => removeDocument(document),
              },
              "Remove",
            )
          : h(
              "button",
              {
                type: "button",
                class: "small",
                onclick: () => showChunks(document),
              },
              "Chunks",
            ),
      ]),
    ),
  );
  ui.documentsEmpty.hidden = documents.length > 0;
  const info = state.bases.find((item) => item.name === state.selected);
  if (info && info.documents !== documents.length) {
    info.documents = documents.length;
    renderBases();
  }
}

// A failed document has nothing to show; it can only be removed (and uploaded again).
async function removeDocument(document) {
  try {
    await api(base(`/documents/${document.id}`), { method: "DELETE" });
  } catch (error) {
    announce(ui.status, error.message);
    return;
  }
  announce(ui.status, `Removed ${document.name}.`);
  await loadDocuments();
}

async function showChunks(document) {
  ui.chunks.hidden = false;
  ui.chunksTitle.textContent = `Chunks of ${document.name}`;
  replaceChildren(ui.chunksList, h("li", { class: "hint" }, "Loading…"));
  try {
    const chunks = (await api(base(`/documents/${document.id}/chunks?limit=500`))).data;
    replaceChildren(
      ui.chunksList,
      chunks.map((chunk) =>
        h(
          "li",
          { class: "chunk" },
          h(
            "p",
            { class: "chunk-meta" },
            [headingText(chunk.location), pagesText(chunk.location)].filter(Boolean).join(" · ") || `Chunk ${chunk.ordinal + 1}`,
          ),
          h("p", { class: "chunk-text" }, chunk.text),
        ),
      ),
    );
    if (!chunks.length) ui.chunksList.append(h("li", { class: "hint" }, "No chunks (yet)."));
  } catch (error) {
    replaceChildren(ui.chunksList, h("li", { class: "message-error" }, error.message));
  }
  ui.chunksTitle.focus();
}

// -- uploads ------------------------------------------------------------------------

function uploadFiles(fileList) {
  if (!state.selected) return;
  for (const file of Array.from(fileList)) {
    // Audio is not a document: with a transcribing model, its transcript is added instead.
    if (state.transcriber && /^(audio|video)\//.test(file.type)) transcribeOne(state.selected, file);
    else uploadOne(state.selected, file);
  }
}

async function uploadOne(baseName, file) {
  const progress = h("progress", { max: "100", value: "0", "aria-label": `Upload progress of ${file.name}` });
  const status = h("span", { class: "upload-status" }, "uploading");
  ui.uploads.append(h("li", { class: "upload" }, h("span", { class: "upload-name" }, file.name), progress, status));
  const setStatus = (text, kind) => {
    status.textContent = text;
    status.className = `upload-status status-${kind}`;
  };
  const form = new FormData();
  form.append("file", file, file.name);
  let document;
  try {
    const answer = await upload(`/api/knowledge/${encodeURIComponent(baseName)}/documents`, form, (fraction) => {
      progress.value = Math.round(fraction * 100);
    });
    document = answer.data[0].document;
  } catch (error) {
    setStatus(`failed: ${error.message}`, "failed");
    return;
  }
  progress.value = 100;
  setStatus(statusText(document), document.status);
  if (baseName === state.selected) loadDocuments();
  while (!FINAL.has(document.status)) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      document = await api(`/api/knowledge/${encodeURIComponent(baseName)}/documents/${document.id}`);
    } catch (error) {
      setStatus(`failed: ${error.message}`, "failed");
      return;
    }
    setStatus(statusText(document), document.status);
  }
  if (baseName === state.selected) loadDocuments();
}

// -- audio transcripts ------------------------------------------------------------------

// The first model that transcribes; without one the audio control stays hidden.
async function findTranscriber() {
  try {
    const models = (await api("/v1/models")).data;
    const found = models.find((model) => (model.capabilities || []).includes("transcription"));
    state.transcriber = found ? found.id : null;
  } catch {
    state.transcriber = null;
  }
  ui.audio.hidden = !state.transcriber;
}

function transcriptName(name) {
  const stem = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : name;
  return `${stem || "audio"}.txt`;
}

async function transcribeOne(baseName, file) {
  const progress = h("progress", { max: "100", value: "0", "aria-label": `Upload progress of ${file.name}` });
  const status = h("span", { class: "upload-status" }, "uploading audio");
  ui.uploads.append(h("li", { class: "upload" }, h("span", { class: "upload-name" }, file.name), progress, status));
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", state.transcriber);
  form.append("response_format", "json");
  let text;
  try {
    const answer = await upload("/v1/audio/transcriptions", form, (fraction) => {
      progress.value = Math.round(fraction * 100);
      if (fraction >= 1) status.textContent = "transcribing";
    });
    text = (answer && answer.text) || "";
  } catch (error) {
    status.textContent = `failed: ${error.message}`;
    status.className = "upload-status status-failed";
    return;
  }
  if (!text.trim()) {
    status.textContent = "failed: no speech was heard";
    status.className = "upload-status status-failed";
    return;
  }
  status.textContent = "transcribed";
  status.className = "upload-status status-indexed";
  const transcript = new File([text], transcriptName(file.name), { type: "text/plain" });
  await uploadOne(baseName, transcript);
}

function wireDropZone() {
  const zone = ui.dropZone;
  const over = (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) uploadFiles(event.dataTransfer.files);
  });
  ui.files.addEventListener("change", () => {
    uploadFiles(ui.files.files);
    ui.files.value = "";
  });
  ui.audioFiles.addEventListener("change", () => {
    if (state.selected && state.transcriber) {
      for (const file of Array.from(ui.audioFiles.files)) transcribeOne(state.selected, file);
    }
    ui.audioFiles.value = "";
  });
}

// -- search ---------------------------------------------------------------------------

function score(value) {
  return typeof value === "number" ? value.toFixed(3) : "—";
}

async function search(event) {
  event.preventDefault();
  const query = ui.query.value.trim();
  if (!query || !state.selected) return;
  replaceChildren(ui.results, h("li", { class: "hint" }, "Searching…"));
  let answer;
  try {
    answer = await api(base("/query"), { method: "POST", json: { query, top_k: 8 } });
  } catch (error) {
    replaceChildren(ui.results, h("li", { class: "message-error" }, error.message));
    return;
  }
  replaceChildren(
    ui.results,
    answer.data.map((passage) =>
      h(
        "li",
        { class: "result" },
        h(
          "p",
          { class: "result-meta" },
          h("strong", {}, passage.document?.name || ""),
          [pagesText(passage.location), headingText(passage.location)].filter(Boolean).map((part) => ` · ${part}`),
        ),
        h(
          "p",
          { class: "result-scores" },
          h("span", { class: "score" }, `score ${score(passage.score)}`),
          " ",
          h("span", { class: "score" }, `similarity ${score(passage.similarity)}`),
        ),
        h("p", { class: "chunk-text" }, passage.text),
      ),
    ),
  );
  if (!answer.data.length) ui.results.append(h("li", { class: "hint" }, "No passage cleared the threshold."));
}

async function main() {
  initLayout();
  ui.createForm.addEventListener("submit", createBase);
  ui.queryForm.addEventListener("submit", search);
  ui.chunksClose.addEventListener("click", () => {
    ui.chunks.hidden = true;
  });
  wireDropZone();
  findTranscriber();
  await loadBases();
  const wanted = new URLSearchParams(window.location.search).get("kb");
  const first = state.bases.find((info) => info.name === wanted) || state.bases[0];
  if (first) await selectBase(first.name);
}

main();
