"""The web page of ``clipkit serve``: a search box, image upload and drag-and-drop, "more like
this", an index picker, results as a thumbnail grid. Self-contained: its script and style are
served by the same process (``/page.js``, ``/page.css``), nothing remote, so it works offline.

The script builds every element with ``textContent`` and attributes, never ``innerHTML``, so
captions, metadata, file names and queries reach the page as text; the page's Content Security
Policy allows scripts from this origin only, so an injected inline script would not run either.
"""

from __future__ import annotations

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clipkit search</title>
<link rel="stylesheet" href="/page.css">
<script src="/page.js" defer></script>
</head>
<body>
<header>
  <h1>clipkit</h1>
  <form id="search" role="search">
    <input id="query" type="search" placeholder="Search: a photo of a dog  (press / to focus)"
           aria-label="Text query" autocomplete="off" maxlength="1000">
    <label>index <select id="index" aria-label="Index"></select></label>
    <label>k <input id="k" type="number" min="1" max="1000" value="24" aria-label="Results"></label>
    <label>weights <input id="weights" placeholder="1,0.5" size="8"
           aria-label="Weights: text first, then each image"></label>
    <button type="submit">Search</button>
  </form>
  <div id="drop" tabindex="0" role="button"
       aria-label="Add query images: drop them here, or press Enter to choose files">
    Drop images here or <label class="link">choose files<input id="images" type="file"
    accept="image/*" multiple hidden></label> to search by image
    <span id="chosen"></span> <button id="clear" type="button" hidden>clear images</button>
  </div>
</header>
<p id="status" role="status" aria-live="polite"></p>
<main id="results" aria-label="Results"></main>
</body>
</html>
"""

LOGIN = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>clipkit: sign in</title>
<link rel="stylesheet" href="/page.css"></head>
<body>
<form class="login" method="post" action="/api/login">
  <h1>clipkit</h1>
  <p>This server needs its token.</p>
  <label>Token
    <input name="token" type="password" autocomplete="current-password" autofocus></label>
  <button type="submit">Sign in</button>
</form>
</body>
</html>
"""

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { background: #fff; padding: 12px 20px; border-bottom: 1px solid #ddd; }
h1 { font-size: 20px; margin: 0 0 8px; }
form#search { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
#query { flex: 1 1 320px; font-size: 16px; padding: 6px 8px; }
#k { width: 5em; }
#drop { margin-top: 8px; padding: 8px; border: 2px dashed #bbb; border-radius: 6px;
        color: #555; }
#drop.over { border-color: #2a6df4; background: #eef3ff; }
.link { color: #2a6df4; text-decoration: underline; cursor: pointer; }
#status { margin: 8px 20px; color: #555; min-height: 1.4em; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr));
           gap: 12px; padding: 0 20px 20px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px;
        overflow-wrap: anywhere; }
.card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; }
.card .score { font-weight: 600; }
.card .meta { color: #555; font-size: 13px; }
.card button { margin-top: 6px; }
.error { color: #b00020; }
form.login { max-width: 320px; margin: 80px auto; background: #fff; padding: 20px;
             border: 1px solid #ddd; border-radius: 6px; display: grid; gap: 10px; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
let images = [];

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function call(url, options) {
  const answer = await fetch(url, options);
  const body = await answer.json().catch(() => ({ error: answer.statusText }));
  if (answer.status === 401) { window.location.reload(); }
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

function post(body) {
  const headers = { "Content-Type": "application/json" };
  return call("/api/search", { method: "POST", headers, body: JSON.stringify(body) });
}

function show(found, index, label) {
  const results = $("results");
  results.replaceChildren();
  for (const hit of found.hits) {
    const card = element("article", null, "card");
    card.dataset.id = hit.id;
    if (hit.kind === "image") {
      const img = element("img");
      img.alt = hit.uri;
      img.loading = "lazy";
      img.src = "/api/thumbnail/" + encodeURIComponent(index) + "/" + encodeURIComponent(hit.id);
      card.append(img);
    }
    card.append(element("div", hit.score.toFixed(4), "score"));
    card.append(element("div", hit.kind === "text" ? hit.text : hit.uri, "name"));
    for (const [key, value] of Object.entries(hit.meta || {})) {
      card.append(element("div", key + ": " + value, "meta"));
    }
    const more = element("button", "More like this", "more");
    more.type = "button";
    more.addEventListener("click", () => run({ rows: [hit.id] }, "more like " + hit.uri));
    card.append(more);
    results.append(card);
  }
  say(found.hits.length + " results for " + (label || found.query) + " in " + index);
}

async function run(extra, label) {
  const index = $("index").value;
  const k = Number($("k").value) || 24;
  const text = $("query").value.trim();
  const weights = $("weights").value.trim();
  say("Searching " + (label || text) + "…");
  try {
    let found;
    if (extra) {
      found = await post({ ...extra, k, index });
    } else if (images.length) {
      const form = new FormData();
      for (const file of images) form.append("images", file);
      if (text) form.append("q", text);
      if (weights) form.append("weights", weights);
      form.append("k", String(k));
      form.append("index", index);
      found = await call("/api/search/images", { method: "POST", body: form });
    } else if (text) {
      const body = { texts: [text], k, index };
      if (weights) body.weights = weights.split(",").map(Number);
      found = await post(body);
    } else {
      say("Type a query or add an image.");
      return;
    }
    show(found, index, label);
  } catch (error) {
    say(error.message, true);
  }
}

function choose(files) {
  images = Array.from(files).filter((file) => file.type.startsWith("image/"));
  const names = images.map((file) => file.name).join(", ");
  $("chosen").textContent = images.length ? images.length + " image(s): " + names : "";
  $("clear").hidden = !images.length;
  if (images.length) run();
}

async function start() {
  const picker = $("index");
  try {
    for (const index of await call("/api/indexes")) {
      const option = element("option", index.name + " (" + index.rows + " " + index.kind + ")");
      option.value = index.name;
      picker.append(option);
    }
  } catch (error) { say(error.message, true); }
  $("search").addEventListener("submit", (event) => { event.preventDefault(); run(); });
  $("images").addEventListener("change", (event) => choose(event.target.files));
  $("clear").addEventListener("click", () => { $("images").value = ""; choose([]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault(); drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault(); drop.classList.remove("over"); choose(event.dataTransfer.files);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter") $("images").click(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== $("query")) {
      event.preventDefault(); $("query").focus();
    }
  });
  $("query").focus();
}

start();
"""
