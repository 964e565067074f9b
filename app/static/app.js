// clipsearch web page: text and expression search, image drop, filters, results grid, viewer.
// Plain browser JavaScript, no build step; it only calls the /v1 API of the server it came from.
// Every search is a history entry whose URL holds the query and the filters, so back/forward
// and shared links work; an uploaded image lives in this page only and the URL names it by number.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const statusLine = $("status");
const results = $("results");
const keyInput = $("key");
const more = $("more");
const viewer = $("viewer");
const queryImage = $("query-image");
const DEFAULT_K = 24;
const uploads = []; // the files dropped or chosen since the page loaded: {file, url}
let resultBlobs = []; // object URLs made for the current results (keyed thumbnails)
let maxK = 100; // the server's, from /v1/index
let counts = { images: Infinity, texts: Infinity }; // what the index holds, from /v1/index
let generation = 0; // a newer search makes the answers of older ones stale
let current = null; // {state, limit}: what the grid shows

keyInput.value = localStorage.getItem("clipsearch-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("clipsearch-key", keyInput.value.trim());
  loadStats();
});

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = keyInput.value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(
      `Server unreachable: nothing answers at ${location.origin}. ` +
        "Is `clipsearch serve` still running? Search again once it is back.",
    );
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

// --- search state <-> form <-> URL -------------------------------------------------------

/** The filters and options set in the form (everything but what to search for). */
function formOptions() {
  return {
    target: $("target").value,
    k: Number($("k").value) || DEFAULT_K,
    path: $("path").value.trim(),
    from: $("from").value,
    to: $("to").value,
  };
}

const URL_KEYS = ["q", "like", "upload", "target", "k", "path", "from", "to"];

function urlFor(state) {
  const params = new URLSearchParams();
  for (const key of URL_KEYS) {
    const value = state[key];
    if (value === undefined || value === null || value === "") continue;
    if ((key === "target" && value === "images") || (key === "k" && value === DEFAULT_K)) continue;
    params.set(key, String(value));
  }
  const query = params.toString();
  return query ? `?${query}` : location.pathname;
}

function stateFromUrl() {
  const params = new URLSearchParams(location.search);
  const state = {
    target: params.get("target") === "texts" ? "texts" : "images",
    k: Math.max(1, Number(params.get("k")) || DEFAULT_K),
    path: params.get("path") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
  };
  if (params.get("q")) state.q = params.get("q");
  else if (/^\d+$/.test(params.get("like") || "")) state.like = Number(params.get("like"));
  else if (/^\d+$/.test(params.get("upload") || "")) state.upload = Number(params.get("upload"));
  // A reload keeps history.state: the display name of the image searched by.
  if (history.state && history.state.name) state.name = history.state.name;
  return state;
}

function applyToForm(state) {
  $("query").value = state.q || ""; // an image search clears the last text query
  $("target").value = state.target;
  const k = $("k");
  if (![...k.options].some((o) => Number(o.value) === state.k)) k.add(new Option(state.k));
  k.value = String(state.k);
  $("path").value = state.path;
  $("from").value = state.from;
  $("to").value = state.to;
}

function isSearch(state) {
  return Boolean(state && (state.q || state.like !== undefined || state.upload !== undefined));
}

/** A new search: a new history entry, then its results. */
function navigate(state) {
  const url = urlFor(state);
  if (new URL(url, location.href).href === location.href) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
  applyToForm(state);
  show(state);
}

window.addEventListener("popstate", (e) => {
  const state = e.state && isSearch(e.state) ? e.state : stateFromUrl();
  applyToForm(state);
  if (isSearch(state)) show(state);
  else clear();
});

// --- requests ----------------------------------------------------------------------------

function label(state) {
  if (state.q) return `“${state.q}”`;
  if (state.like !== undefined) return state.name || `image #${state.like}`;
  return state.name || "the uploaded image";
}

function filterOf(state) {
  const filter = {};
  if (state.path) filter.path_prefix = state.path;
  if (state.from) filter.taken_from = state.from;
  if (state.to) filter.taken_to = state.to;
  return Object.keys(filter).length ? filter : undefined;
}

function request(state, k) {
  const common = { k, target: state.target, filter: filterOf(state) };
  const json = (path, body) => [
    path,
    {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(Object.assign(body, common)),
    },
  ];
  if (state.q) return json("v1/search/text", { query: state.q });
  if (state.like !== undefined) return json("v1/search/image", { image_id: state.like });
  const upload = uploads[state.upload];
  if (!upload) throw new Error("An uploaded image is not kept when the page reloads: drop it again.");
  const data = new FormData();
  data.append("file", upload.file, upload.file.name || "image");
  data.append("k", String(k));
  data.append("target", state.target);
  for (const [name, value] of Object.entries(filterOf(state) || {})) data.append(name, value);
  return ["v1/search/image", { method: "POST", headers: headers(), body: data }];
}

/** Run ``state`` for ``limit`` hits; ``append`` keeps the cards already shown (load more). */
async function fetchHits(state, limit, append) {
  const gen = ++generation;
  const what = label(state);
  setStatus(`Searching ${what}…`);
  $("search").disabled = true;
  more.disabled = true;
  try {
    const body = await api(...request(state, limit));
    if (gen !== generation) return;
    render(body.hits, append);
    current = { state, limit };
    const all = body.hits.length >= counts[state.target] && !filterOf(state); // nothing left
    more.hidden = body.hits.length < limit || limit >= maxK || all;
    const n = body.hits.length;
    setStatus(`${n} result${n === 1 ? "" : "s"} for ${what} in ${body.took_ms.toFixed(1)} ms`);
  } catch (e) {
    if (gen !== generation) return;
    if (!append) results.replaceChildren();
    more.hidden = true;
    setStatus(e.message, true);
  } finally {
    if (gen === generation) {
      $("search").disabled = false;
      more.disabled = false;
    }
  }
}

function show(state) {
  if (viewer.open) viewer.close();
  showQueryImage(state);
  return fetchHits(state, Math.min(state.k, maxK), false);
}

function clear() {
  generation++;
  current = null;
  results.replaceChildren();
  more.hidden = true;
  queryImage.hidden = true;
  setStatus("");
}

more.addEventListener("click", () => {
  if (!current) return;
  const limit = Math.min(current.limit + current.state.k, maxK);
  fetchHits(current.state, limit, true);
});

// --- images ------------------------------------------------------------------------------

async function setImage(img, url, blobs) {
  // Without a key the browser loads the image itself; with one, fetch it with the header.
  if (!keyInput.value.trim()) {
    img.src = url;
    return url;
  }
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) return null;
    const blobUrl = URL.createObjectURL(await response.blob());
    blobs.push(blobUrl);
    img.src = blobUrl;
    return blobUrl;
  } catch (e) {
    return null; // a missing image leaves an empty tile
  }
}

let queryBlobs = [];
function showQueryImage(state) {
  while (queryBlobs.length) URL.revokeObjectURL(queryBlobs.pop());
  const img = queryImage.querySelector("img");
  if (state.like !== undefined) {
    setImage(img, `v1/images/${state.like}/thumbnail`, queryBlobs);
  } else if (state.upload !== undefined && uploads[state.upload]) {
    img.src = uploads[state.upload].url;
  } else {
    queryImage.hidden = true;
    return;
  }
  img.alt = label(state);
  queryImage.querySelector(".name").textContent = label(state);
  queryImage.hidden = false;
}

function fileName(path) {
  return (path || "").split("/").pop();
}

function render(hits, append) {
  const shown = new Set();
  if (append) {
    for (const card of results.children) shown.add(Number(card.dataset.id));
  } else {
    while (resultBlobs.length) URL.revokeObjectURL(resultBlobs.pop());
  }
  const cards = hits
    .filter((hit) => !shown.has(hit.id))
    .map((hit) => {
      const isImage = hit.kind === "image";
      const card = $(isImage ? "image-hit" : "text-hit").content.firstElementChild.cloneNode(true);
      card.dataset.id = String(hit.id);
      card.querySelector(".score").textContent = hit.score.toFixed(3);
      if (isImage) {
        const name = fileName(hit.path);
        const img = card.querySelector("img");
        img.alt = name;
        setImage(img, hit.thumbnail_url, resultBlobs);
        card.querySelector(".name").textContent = name;
        card.title = `${hit.path} (${hit.width}×${hit.height}): click to view`;
        card.addEventListener("click", () => openViewer(hit));
      } else {
        card.querySelector("blockquote").textContent = hit.text;
        card.addEventListener("click", () => navigate(Object.assign(formOptions(), { q: hit.text })));
      }
      card.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          card.click();
        }
      });
      return card;
    });
  if (append) results.append(...cards);
  else results.replaceChildren(...cards);
}

// --- the full-size viewer ----------------------------------------------------------------

let viewerBlobs = [];
let viewing = null;

async function openViewer(hit) {
  while (viewerBlobs.length) URL.revokeObjectURL(viewerBlobs.pop());
  viewing = hit;
  const img = $("viewer-img");
  img.removeAttribute("src");
  img.alt = hit.path;
  $("viewer-path").textContent = hit.path;
  $("viewer-taken").textContent = hit.taken ? hit.taken.replace("T", " ") : "unknown";
  $("viewer-camera").textContent = hit.camera || "unknown";
  $("viewer-size").textContent = hit.width ? `${hit.width} × ${hit.height} px` : "unknown";
  $("viewer-score").textContent = hit.score.toFixed(3);
  $("viewer-dups").textContent = hit.duplicates.length
    ? `Identical copies: ${hit.duplicates.join(", ")}`
    : "";
  const open = $("viewer-open");
  open.href = hit.url;
  if (!viewer.open) viewer.showModal();
  const src = await setImage(img, hit.url, viewerBlobs);
  if (src && viewing === hit) open.href = src; // with a key, the link must carry the bytes
}

$("viewer-like").addEventListener("click", () => {
  const hit = viewing;
  viewer.close();
  if (hit) navigate(Object.assign(formOptions(), { like: hit.id, name: fileName(hit.path) }));
});
$("viewer-close").addEventListener("click", () => viewer.close());
viewer.addEventListener("click", (e) => {
  if (e.target === viewer) viewer.close(); // a click on the backdrop
});

// --- the form, the drop zone, option changes ----------------------------------------------

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("query").value.trim();
  if (q) {
    navigate(Object.assign(formOptions(), { q }));
  } else if (current && !current.state.q) {
    // New filters for the image searched by.
    const { like, upload, name } = current.state;
    navigate(Object.assign(formOptions(), { like, upload, name }));
  } else {
    setStatus("Type something to search for, or drop an image.", true);
  }
});

for (const id of ["target", "k", "from", "to"]) {
  $(id).addEventListener("change", () => {
    if (!current) return;
    const { q, like, upload, name } = current.state;
    navigate(Object.assign(formOptions(), { q, like, upload, name }));
  });
}

function searchFile(file) {
  uploads.push({ file, url: URL.createObjectURL(file) });
  navigate(Object.assign(formOptions(), { upload: uploads.length - 1, name: file.name || "image" }));
}

const drop = $("drop");
["dragenter", "dragover"].forEach((type) =>
  drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }),
);
["dragleave", "drop"].forEach((type) =>
  drop.addEventListener(type, () => drop.classList.remove("over")),
);
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (file) searchFile(file);
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    $("file").click();
  }
});
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) searchFile(file);
  e.target.value = "";
});

async function loadStats() {
  try {
    const info = await api("v1/index", { headers: headers() });
    const s = info.stats;
    maxK = info.service.max_k;
    counts = { images: s.images, texts: s.texts };
    $("stats").textContent = `${s.images} images · ${s.texts} texts · ${info.provenance.model}`;
    return true;
  } catch (e) {
    $("stats").textContent = e.message;
    return false;
  }
}

// A shared link or a reload: run the search its URL holds (after learning the server's max k).
loadStats().then(() => {
  const state = stateFromUrl();
  applyToForm(state);
  if (isSearch(state)) {
    history.replaceState(state, "", urlFor(state));
    show(state);
  }
});
