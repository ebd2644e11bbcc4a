// steadysam annotate: the page. Plain JavaScript, no build step; talks to the JSON API
// (docs/app.md). The server is the truth: every action is a request, and the page redraws
// what the server answers.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  project: null,
  images: [],
  image: null,          // {id, file_name, width, height, status, objects: [...]}
  picture: null,        // HTMLImageElement of the current image
  selected: null,       // selected object id (the one prompts go to)
  category: null,       // category id for new objects
  view: { scale: 1, x: 0, y: 0 },
  masks: new Map(),     // object id -> {version, canvas}
  drag: null,           // {x0, y0, sx, sy, button, pan, box}
  lastChange: null,
  busy: 0,
};

// -- API -------------------------------------------------------------------------------------
async function api(method, path, body) {
  state.busy++;
  document.body.dataset.busy = String(state.busy);
  try {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) {
      const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return data;
  } finally {
    state.busy--;
    document.body.dataset.busy = String(state.busy);
  }
}

function say(text) { $("message").textContent = text || ""; }

async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    if (e.status === 409 && state.image) {
      say(`${e.message} (reloaded)`);
      await loadImage(state.image.id, false);
    } else {
      say(e.message);
    }
    return null;
  }
}

// -- colours ---------------------------------------------------------------------------------
function categoryColor(id) {
  const hue = (id * 137.508) % 360;  // golden angle: neighbours differ
  return hslToRgb(hue / 360, 0.75, 0.55);
}
function hslToRgb(h, s, l) {
  const f = (n) => {
    const k = (n + h * 12) % 12;
    return Math.round(255 * (l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}
const css = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;

// -- loading ---------------------------------------------------------------------------------
async function loadProject() {
  state.project = await api("GET", "/api/project");
  const cats = state.project.categories;
  if (!cats.some((c) => c.id === state.category)) state.category = cats.length ? cats[0].id : null;
  $("model").textContent = state.project.model ? `model: ${state.project.model}` : "";
  $("plugin-box").hidden = !state.project.plugin_available;
  $("plugin").checked = state.project.plugin_enabled;
  renderCategories();
}

async function loadImages() {
  state.images = await api("GET", "/api/images");
  renderImages();
}

async function loadImage(id, fit = true) {
  const image = await api("GET", `/api/images/${id}`);
  const changedPicture = !state.image || state.image.id !== id;
  state.image = image;
  if (!image.objects.some((o) => o.id === state.selected)) state.selected = null;
  if (changedPicture) {
    state.masks.clear();
    state.lastChange = null;
    showChange(null);
    state.picture = await new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`image ${id} could not be loaded`));
      img.src = `/api/images/${id}/file`;
    });
    if (fit) fitView();
    history.replaceState(null, "", `#${id}`);
    // Prepare the embedding now (the first click is then at decoder speed).
    say("preparing image…");
    api("POST", `/api/images/${id}/open`).then(() => say(""), (e) => say(e.message));
  }
  $("image-name").textContent = image.file_name;
  $("image-status").value = image.status;
  renderObjects();
  renderImages();
  draw();
}

function updateObject(obj) {
  const objects = state.image.objects;
  const i = objects.findIndex((o) => o.id === obj.id);
  if (i >= 0) objects[i] = obj; else objects.push(obj);
  renderObjects();
  draw();
}

function maskCanvas(obj) {
  if (!obj.mask) return null;
  const cached = state.masks.get(obj.id);
  const key = `${obj.version}|${obj.category_id}`;
  if (cached && cached.key === key) return cached.canvas;
  const c = rleCanvas(obj.mask, [...categoryColor(obj.category_id), 255]);
  state.masks.set(obj.id, { key, canvas: c });
  return c;
}

// -- drawing ---------------------------------------------------------------------------------
function resizeCanvas() {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(r.width * dpr));
  canvas.height = Math.max(1, Math.round(r.height * dpr));
}

function fitView() {
  if (!state.image) return;
  resizeCanvas();
  const { width, height } = state.image;
  const scale = Math.min(canvas.width / width, canvas.height / height) * 0.96;
  state.view = {
    scale,
    x: (canvas.width - width * scale) / 2,
    y: (canvas.height - height * scale) / 2,
  };
  draw();
}

function draw() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image || !state.picture) return;
  const v = state.view;
  ctx.setTransform(v.scale, 0, 0, v.scale, v.x, v.y);
  ctx.imageSmoothingEnabled = v.scale < 2;
  ctx.drawImage(state.picture, 0, 0);
  for (const obj of state.image.objects) {
    if (obj.hidden) continue;
    const m = maskCanvas(obj);
    if (!m) continue;
    ctx.globalAlpha = obj.id === state.selected ? 0.6 : 0.4;
    ctx.drawImage(m, 0, 0);
  }
  ctx.globalAlpha = 1;
  const sel = state.image.objects.find((o) => o.id === state.selected);
  if (sel && !sel.hidden) drawPrompts(sel.prompts);
  const d = state.drag;
  if (d && d.box) {
    ctx.lineWidth = 2 / v.scale;
    ctx.strokeStyle = "#ffd33d";
    ctx.setLineDash([6 / v.scale, 4 / v.scale]);
    ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    ctx.setLineDash([]);
  }
}

function drawPrompts(prompts) {
  const s = state.view.scale;
  for (const p of prompts) {
    if (p.type === "box") {
      const [x0, y0, x1, y1] = p.box;
      ctx.lineWidth = 2 / s;
      ctx.strokeStyle = "#ffd33d";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
  prompts.filter((p) => p.type === "click").forEach((p, i, all) => {
    const r = 6 / s;
    ctx.beginPath();
    ctx.arc(p.x + 0.5, p.y + 0.5, r, 0, 2 * Math.PI);
    ctx.fillStyle = p.positive ? "#2ea043" : "#da3633";
    ctx.fill();
    ctx.lineWidth = (i === all.length - 1 ? 3 : 1.5) / s;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  });
}

// -- lists -----------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const STATUS_TEXT = { new: "not started", in_progress: "in progress", done: "done" };

function renderImages() {
  const list = $("images");
  list.replaceChildren(...state.images.map((im) => el("li", {
    class: state.image && im.id === state.image.id ? "current" : "",
    title: `${STATUS_TEXT[im.status]}, ${im.objects} object(s)`,
    "data-id": im.id,
    onclick: () => guarded(() => openImage(im.id)),
  }, el("span", { class: `dot ${im.status}` }), im.file_name,
     el("span", { class: "prep" }, im.prepared ? "" : "…"))));
}

function renderCategories() {
  const cats = state.project ? state.project.categories : [];
  $("categories").replaceChildren(...cats.map((c, i) => el("li", {
    class: c.id === state.category ? "current" : "", "data-id": c.id,
  }, el("span", { class: "swatch", style: `background:${css(categoryColor(c.id))}` }),
     el("span", { class: "key", title: "its key" }, i < 9 ? String(i + 1) : ""),
     el("span", { class: "name", title: "click: use for new objects; double-click: rename",
       onclick: () => chooseCategory(c.id),
       ondblclick: () => renameCategory(c) }, c.name),
     el("button", { class: "icon", title: "delete category",
       onclick: () => guarded(async () => {
         await api("DELETE", `/api/categories/${c.id}`);
         await loadProject();
       }) }, "✕"))));
}

function renderObjects() {
  const objs = state.image ? state.image.objects : [];
  const cats = state.project.categories;
  $("objects").replaceChildren(...objs.map((o) => {
    const select = el("select", { title: "category", onclick: (e) => e.stopPropagation(),
      onchange: (e) => guarded(async () => updateObject(await api("PATCH", `/api/objects/${o.id}`,
        { category_id: Number(e.target.value), version: o.version }))) },
      ...cats.map((c) => {
        const opt = el("option", { value: c.id }, c.name);
        if (c.id === o.category_id) opt.selected = true;
        return opt;
      }));
    const n = o.prompts.length;
    return el("li", {
      class: `${o.id === state.selected ? "selected" : ""} ${o.hidden ? "hidden-object" : ""}`,
      "data-id": o.id,
      onclick: () => {
        if (state.selected !== o.id) showChange(null);
        state.selected = o.id;
        renderObjects();
        draw();
      },
    }, el("span", { class: "swatch", style: `background:${css(categoryColor(o.category_id))}` }),
       el("span", { class: "label", title: "double-click: rename",
         ondblclick: () => renameObject(o) },
         `#${o.id} ${o.name ? o.name + " " : ""}· ${n} prompt${n === 1 ? "" : "s"}` +
         `${o.imported ? " · imported" : ""}`),
       select,
       el("button", { class: "icon", title: "hide / show (H)", onclick: (e) => {
         e.stopPropagation(); toggleHidden(o);
       } }, o.hidden ? "◌" : "◉"),
       el("button", { class: "icon", title: "delete (Delete)", onclick: (e) => {
         e.stopPropagation(); deleteObject(o);
       } }, "✕"));
  }));
}

function showChange(change) {
  const box = $("change");
  if (!change || change.iou_previous === null) {
    box.textContent = "";
    box.className = "change";
    return;
  }
  const pct = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(v * 100).toFixed(1)} %`;
  const parts = [`IoU vs previous ${(change.iou_previous * 100).toFixed(1)} %`];
  if (change.delta_iou !== null) parts.unshift(`ΔIoU ${pct(change.delta_iou)}`);
  if (change.drop) parts.push("⚠ drop: U goes back");
  box.textContent = parts.join(" · ");
  box.className = `change ${change.drop ? "drop" : "ok"}`;
}

// -- actions ---------------------------------------------------------------------------------
async function openImage(id) {
  await loadImage(id);
}

async function step(delta) {
  if (!state.images.length) return;
  const i = state.images.findIndex((im) => state.image && im.id === state.image.id);
  const next = state.images[(i + delta + state.images.length) % state.images.length];
  await openImage(next.id);
}

function chooseCategory(id) {
  state.category = id;
  renderCategories();
  const sel = selectedObject();
  if (sel && sel.category_id !== id) {
    guarded(async () => updateObject(await api("PATCH", `/api/objects/${sel.id}`,
      { category_id: id, version: sel.version })));
  }
}

async function renameCategory(c) {
  const name = prompt("rename category", c.name);
  if (!name || name === c.name) return;
  await guarded(async () => {
    await api("PATCH", `/api/categories/${c.id}`, { name });
    await loadProject();
    await loadImage(state.image.id, false);
  });
}

async function renameObject(o) {
  const name = prompt("object name", o.name);
  if (name === null) return;
  await guarded(async () => updateObject(await api("PATCH", `/api/objects/${o.id}`,
    { name, version: o.version })));
}

function selectedObject() {
  return state.image && state.image.objects.find((o) => o.id === state.selected);
}

async function toggleHidden(o) {
  await guarded(async () => updateObject(await api("PATCH", `/api/objects/${o.id}`,
    { hidden: !o.hidden, version: o.version })));
}

async function deleteObject(o) {
  // Deleting is the one action undo does not cover: ask first.
  if (!confirm(`Delete object #${o.id} (${o.category}, ${o.prompts.length} prompts)?`)) return;
  await guarded(async () => {
    await api("DELETE", `/api/objects/${o.id}?version=${o.version}`);
    if (state.selected === o.id) state.selected = null;
    await loadImage(state.image.id, false);
    await loadImages();
  });
}

async function prompt_(body) {
  await guarded(async () => {
    let obj = selectedObject();
    if (!obj) {
      if (state.category === null) throw new Error("add a category first");
      obj = await api("POST", `/api/images/${state.image.id}/objects`,
        { category_id: state.category });
      state.selected = obj.id;
      if (state.image.status === "new") {
        state.image.status = "in_progress";
        $("image-status").value = "in_progress";
      }
      updateObject(obj);
      loadImages();
    }
    const r = await api("POST", `/api/objects/${obj.id}/prompts`, { ...body, version: obj.version });
    state.lastChange = r.change;
    showChange(r.change);
    say(`mask in ${r.ms.toFixed(0)} ms`);
    updateObject(r.object);
  });
}

async function undoRedo(which) {
  const obj = selectedObject();
  if (!obj) { say("select an object first"); return; }
  await guarded(async () => {
    updateObject(await api("POST", `/api/objects/${obj.id}/${which}`, { version: obj.version }));
    showChange(null);
    say(which === "undo" ? "undone" : "redone");
  });
}

function finishObject() {
  state.selected = null;
  showChange(null);
  renderObjects();
  draw();
  say("next click starts a new object");
}

async function setStatus(status) {
  await guarded(async () => {
    const im = await api("PUT", `/api/images/${state.image.id}/status`, { status });
    state.image.status = im.status;
    $("image-status").value = im.status;
    await loadImages();
  });
}

async function togglePlugin(on) {
  await guarded(async () => {
    const r = await api("PUT", "/api/settings", { plugin: on });
    $("plugin").checked = r.plugin_enabled;
    say(`Stable-SAM plugin ${r.plugin_enabled ? "on" : "off"}`);
  });
}

// -- mouse -----------------------------------------------------------------------------------
function toImage(ev) {
  const r = canvas.getBoundingClientRect();
  const dpr = canvas.width / r.width;
  const v = state.view;
  return {
    x: ((ev.clientX - r.left) * dpr - v.x) / v.scale,
    y: ((ev.clientY - r.top) * dpr - v.y) / v.scale,
  };
}

// Client (page) coordinates of image pixel (x, y): for scripts and the browser test.
function imageToClient(x, y) {
  const r = canvas.getBoundingClientRect();
  const dpr = canvas.width / r.width;
  const v = state.view;
  return { x: r.left + (x * v.scale + v.x) / dpr, y: r.top + (y * v.scale + v.y) / dpr };
}

function inside(p) {
  return state.image && p.x >= 0 && p.y >= 0 && p.x < state.image.width && p.y < state.image.height;
}

canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("mousedown", (e) => {
  if (!state.image) return;
  canvas.focus();
  const p = toImage(e);
  const pan = e.button === 1 || (e.button === 0 && (e.ctrlKey || e.metaKey));
  state.drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y, sx: e.clientX, sy: e.clientY,
    button: e.button, shift: e.shiftKey, pan, box: false, vx: state.view.x, vy: state.view.y };
  e.preventDefault();
});
window.addEventListener("mousemove", (e) => {
  const d = state.drag;
  if (!d) return;
  const dpr = canvas.width / canvas.getBoundingClientRect().width;
  if (d.pan) {
    state.view.x = d.vx + (e.clientX - d.sx) * dpr;
    state.view.y = d.vy + (e.clientY - d.sy) * dpr;
    draw();
    return;
  }
  if (d.button !== 0) return;
  const p = toImage(e);
  d.x1 = p.x;
  d.y1 = p.y;
  if (Math.hypot(e.clientX - d.sx, e.clientY - d.sy) > 5) d.box = true;
  if (d.box) draw();
});
window.addEventListener("mouseup", (e) => {
  const d = state.drag;
  state.drag = null;
  if (!d || d.pan) return;
  if (d.box) {
    const { width, height } = state.image;
    const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
    const box = [clamp(Math.min(d.x0, d.x1), width), clamp(Math.min(d.y0, d.y1), height),
      clamp(Math.max(d.x0, d.x1), width), clamp(Math.max(d.y0, d.y1), height)];
    draw();
    if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) prompt_({ type: "box", box });
    return;
  }
  const p = { x: Math.floor(d.x0), y: Math.floor(d.y0) };
  if (!inside(p)) return;
  const positive = d.button === 0 && !d.shift;
  if (d.button === 0 || d.button === 2) prompt_({ type: "click", x: p.x, y: p.y, positive });
});
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  zoomAt(e.clientX, e.clientY, e.deltaY < 0 ? 1.2 : 1 / 1.2);
}, { passive: false });

function zoomAt(clientX, clientY, factor) {
  const r = canvas.getBoundingClientRect();
  const dpr = canvas.width / r.width;
  const cx = (clientX - r.left) * dpr, cy = (clientY - r.top) * dpr;
  const v = state.view;
  v.x = cx - (cx - v.x) * factor;
  v.y = cy - (cy - v.y) * factor;
  v.scale *= factor;
  draw();
}

// -- keyboard --------------------------------------------------------------------------------
function toggleHelp(show) {
  $("help").hidden = show === undefined ? !$("help").hidden : !show;
}

window.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  const k = e.key;
  const ctrl = e.ctrlKey || e.metaKey;
  let handled = true;
  if (k === "?") toggleHelp();
  else if (k === "Escape") { toggleHelp(false); finishObject(); }
  else if (!state.image) handled = false;
  else if (ctrl && (k === "z" || k === "Z")) undoRedo(e.shiftKey ? "redo" : "undo");
  else if (ctrl && k === "y") undoRedo("redo");
  else if (ctrl) handled = false;
  else if (k === "z" || k === "u" || k === "Backspace") undoRedo("undo");
  else if (k === "y") undoRedo("redo");
  else if (k === "n" || k === "Enter") finishObject();
  else if (k === "ArrowRight" || k === ".") guarded(() => step(1));
  else if (k === "ArrowLeft" || k === ",") guarded(() => step(-1));
  else if (k === "d") setStatus(state.image.status === "done" ? "in_progress" : "done");
  else if (k === "h") { const o = selectedObject(); if (o) toggleHidden(o); }
  else if (k === "Delete") { const o = selectedObject(); if (o) deleteObject(o); }
  else if (k === "s") { if (state.project.plugin_available) togglePlugin(!$("plugin").checked); }
  else if (k === "f") fitView();
  else if (k === "+" || k === "=") zoomAt(innerWidth / 2, innerHeight / 2, 1.25);
  else if (k === "-") zoomAt(innerWidth / 2, innerHeight / 2, 0.8);
  else if (/^[1-9]$/.test(k)) {
    const c = state.project.categories[Number(k) - 1];
    if (c) chooseCategory(c.id);
  } else handled = false;
  if (handled) e.preventDefault();
});

// -- wiring ----------------------------------------------------------------------------------
$("prev").onclick = () => guarded(() => step(-1));
$("next").onclick = () => guarded(() => step(1));
$("undo").onclick = () => undoRedo("undo");
$("redo").onclick = () => undoRedo("redo");
$("new-object").onclick = finishObject;
$("help-button").onclick = () => toggleHelp();
$("help-close").onclick = () => toggleHelp(false);
$("image-status").onchange = (e) => setStatus(e.target.value);
$("plugin").onchange = (e) => togglePlugin(e.target.checked);
$("add-category").onsubmit = (e) => {
  e.preventDefault();
  const name = $("new-category").value.trim();
  if (!name) return;
  guarded(async () => {
    const c = await api("POST", "/api/categories", { name });
    $("new-category").value = "";
    state.category = c.id;
    await loadProject();
  });
};
$("import").onchange = async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  await guarded(async () => {
    state.busy++;
    try {
      const r = await fetch("/api/import/coco", { method: "POST", body: await file.text(),
        headers: { "Content-Type": "application/json" } });
      const data = await r.json();
      if (!r.ok) throw new Error(data.error);
      say(`imported ${data.objects} object(s)`);
    } finally { state.busy--; }
    await loadProject();
    await loadImages();
    if (state.image) await loadImage(state.image.id, false);
  });
  e.target.value = "";
};
window.addEventListener("resize", fitView);
// Another tab may have changed things: look again when this one comes back.
window.addEventListener("focus", () => {
  if (state.image && !state.busy) guarded(() => loadImage(state.image.id, false));
});

async function pollStatus() {
  try {
    const s = await fetch("/api/status").then((r) => r.json());
    const e = s.embeddings;
    if (e) {
      $("embed-bar").style.width = `${e.total ? (100 * e.prepared) / e.total : 100}%`;
      $("embed-text").textContent = `${e.prepared}/${e.total}${e.error ? " ⚠" : ""}`;
      $("embed-progress").title = e.error ? `last error: ${e.error}` : "embeddings prepared";
      const unprepared = state.images.some((im) => !im.prepared);
      if (unprepared && e.prepared > 0) {
        state.images = await fetch("/api/images").then((r) => r.json());
        renderImages();
      }
    }
  } catch (err) { /* the server is gone for a moment: try again later */ }
  setTimeout(pollStatus, 2000);
}

async function start() {
  await loadProject();
  await loadImages();
  const fromHash = Number(location.hash.slice(1));
  const first = state.images.find((im) => im.id === fromHash) ||
    state.images.find((im) => im.status !== "done") || state.images[0];
  if (first) await openImage(first.id);
  pollStatus();
  document.body.dataset.ready = "1";
}

window.steadysam = { state, imageToClient, api };
start().catch((e) => say(e.message));
