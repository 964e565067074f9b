// clipsearch web page: text search, image drop, results grid, click a result to search by it.
// Plain browser JavaScript, no build step; it only calls the /v1 API of the server it came from.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const statusLine = $("status");
const results = $("results");
const keyInput = $("key");
const blobUrls = [];

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
  const response = await fetch(path, options);
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

function searchOptions() {
  return { k: Number($("k").value), target: $("target").value };
}

async function run(label, path, options) {
  setStatus(`Searching ${label}…`);
  $("search").disabled = true;
  try {
    const body = await api(path, options);
    render(body.hits);
    const n = body.hits.length;
    setStatus(`${n} result${n === 1 ? "" : "s"} for ${label} in ${body.took_ms.toFixed(1)} ms`);
  } catch (e) {
    results.replaceChildren();
    setStatus(e.message, true);
  } finally {
    $("search").disabled = false;
  }
}

function searchText(query) {
  const body = Object.assign({ query }, searchOptions());
  return run(`“${query}”`, "v1/search/text", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
}

function searchFile(file) {
  const data = new FormData();
  const opts = searchOptions();
  data.append("file", file, file.name || "image");
  data.append("k", String(opts.k));
  data.append("target", opts.target);
  return run(file.name || "the dropped image", "v1/search/image", {
    method: "POST",
    headers: headers(),
    body: data,
  });
}

function searchById(id, name) {
  const body = Object.assign({ image_id: id }, searchOptions());
  return run(name || `image ${id}`, "v1/search/image", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
}

async function setImage(img, url) {
  // Without a key the browser loads the thumbnail itself; with one, fetch it with the header.
  if (!keyInput.value.trim()) {
    img.src = url;
    return;
  }
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) return;
    const blobUrl = URL.createObjectURL(await response.blob());
    blobUrls.push(blobUrl);
    img.src = blobUrl;
  } catch (e) {
    /* a missing thumbnail leaves an empty tile */
  }
}

function render(hits) {
  while (blobUrls.length) URL.revokeObjectURL(blobUrls.pop());
  const cards = hits.map((hit) => {
    const isImage = hit.kind === "image";
    const card = $(isImage ? "image-hit" : "text-hit").content.firstElementChild.cloneNode(true);
    card.dataset.id = String(hit.id);
    card.querySelector(".score").textContent = hit.score.toFixed(3);
    if (isImage) {
      const name = (hit.path || "").split("/").pop();
      const img = card.querySelector("img");
      img.alt = name;
      setImage(img, hit.thumbnail_url);
      card.querySelector(".name").textContent = name;
      card.title = `${name} (${hit.width}×${hit.height}) — click to search by this image`;
      card.addEventListener("click", () => searchById(hit.id, name));
    } else {
      card.querySelector("blockquote").textContent = hit.text;
      card.addEventListener("click", () => {
        $("query").value = hit.text;
        searchText(hit.text);
      });
    }
    card.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        card.click();
      }
    });
    return card;
  });
  results.replaceChildren(...cards);
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const query = $("query").value.trim();
  if (!query) {
    setStatus("Type something to search for, or drop an image.", true);
    return;
  }
  searchText(query);
});

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
    $("stats").textContent =
      `${s.images} images · ${s.texts} texts · ${info.provenance.model}`;
  } catch (e) {
    $("stats").textContent = e.message;
  }
}

loadStats();
