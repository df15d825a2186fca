// The chat page of `tinygptv serve`: talks to /v1/chat/completions (streamed), keeps the conversation
// in the page and resends it whole each turn (the server reuses what its cache holds), and draws the
// grounding boxes of answers ({<x1><y1><x2><y2>} on a 0-100 grid, labels from <p>phrase</p>) over the
// picture they are about. No build step, nothing loaded from other sites.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "tinygptv.apiKey";
const COLORS = ["#e6194b", "#3cb44b", "#0082c8", "#f58230", "#911eb4", "#46f0f0", "#f032e6", "#d2f53c",
  "#008080", "#aa6e28"];

const state = {
  messages: [],          // the conversation as sent to the server (OpenAI messages)
  pendingImage: null,    // data URL of the picture to send with the next question
  lastImage: null,       // data URL of the latest picture in the conversation (boxes are drawn on it)
  controller: null,      // AbortController of the answer being streamed
  auth: false,
  model: "",
};

// ---- grounding boxes (the same rules as tinygptv_native/grounding.py) ------------------------------
const NUM = "<\\s*(-?\\d{1,6})\\s*>";
const BOX_SRC = "\\{\\s*" + [NUM, NUM, NUM, NUM].join("\\s*") + "\\s*\\}";
const TOKEN = new RegExp(BOX_SRC + "|<p>([\\s\\S]*?)</p>|<delim>", "g");

function parseBoxes(text) {
  const boxes = [];
  let label = null;
  let chainEnd = 0;
  for (const m of text.matchAll(TOKEN)) {
    if (text.slice(chainEnd, m.index).trim()) label = null;  // other text in between ends a label
    if (m[5] !== undefined) {
      label = m[5].trim() || null;
    } else if (m[1] !== undefined) {
      const v = [1, 2, 3, 4].map((i) => Math.min(100, Math.max(0, parseInt(m[i], 10))));
      boxes.push({ label, grid: [Math.min(v[0], v[2]), Math.min(v[1], v[3]), Math.max(v[0], v[2]),
        Math.max(v[1], v[3])], start: m.index });
    }
    chainEnd = m.index + m[0].length;
  }
  return boxes;
}

// The answer as DOM nodes: phrases as text, each box as a numbered coloured tag.
function renderAnswer(el, text, boxes, colorOf) {
  el.textContent = "";
  let last = 0;
  let n = 0;
  for (const m of text.matchAll(TOKEN)) {
    el.append(text.slice(last, m.index));
    if (m[5] !== undefined) {
      el.append(m[5]);
    } else if (m[1] !== undefined) {
      const b = boxes[n++];
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = String(n);
      tag.style.setProperty("--c", colorOf(b));
      el.append(tag);
    }
    last = m.index + m[0].length;
  }
  el.append(text.slice(last));
}

// What an unlabelled box shows: the object the question asked about.
function questionLabel(q) {
  return q.replace(/^\s*\[[\w ]+\]\s*/, "").replace(/^(where|what)\s+(is|are)\s+/i, "").replace(/[?.!\s]+$/, "")
    .slice(0, 40) || "box";
}

function drawBoxes(container, image, boxes, question) {
  const fig = document.createElement("div");
  fig.className = "figure";
  const img = document.createElement("img");
  img.src = image;
  img.alt = "the picture with the answer's boxes";
  fig.append(img);
  const colors = new Map();
  const colorOf = (b) => {
    const k = b.label || "";
    if (!colors.has(k)) colors.set(k, COLORS[colors.size % COLORS.length]);
    return colors.get(k);
  };
  const unlabelled = boxes.filter((b) => !b.label).length;
  boxes.forEach((b, i) => {
    const [x1, y1, x2, y2] = b.grid;
    const d = document.createElement("div");
    d.className = "box";
    d.style.left = x1 + "%";
    d.style.top = y1 + "%";
    d.style.width = (x2 - x1) + "%";
    d.style.height = (y2 - y1) + "%";
    d.style.setProperty("--c", colorOf(b));
    const label = document.createElement("span");
    label.className = "label";
    const name = b.label || questionLabel(question) + (unlabelled > 1 ? " " + (i + 1) : "");
    label.textContent = (i + 1) + ": " + name;
    d.dataset.label = name;
    d.append(label);
    fig.append(d);
  });
  container.append(fig);
  return colorOf;
}

// ---- the log -----------------------------------------------------------------------------------------
function addMessage(role, text, image) {
  $("empty-hint")?.remove();
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) {
    const img = document.createElement("img");
    img.className = "sent";
    img.src = image;
    img.alt = "the picture sent";
    div.append(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.append(span);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showStats(div, usage, timings) {
  const s = document.createElement("span");
  s.className = "stats";
  const parts = [];
  if (usage) parts.push(`${usage.completion_tokens} tokens`);
  if (timings && timings.predicted_per_second) parts.push(`${timings.predicted_per_second.toFixed(1)} tokens/s`);
  if (timings && timings.ttft_ms !== undefined) parts.push(`first token ${Math.round(timings.ttft_ms)} ms`);
  if (usage && usage.prompt_tokens_details) {
    parts.push(`prompt ${usage.prompt_tokens} (${usage.prompt_tokens_details.cached_tokens} cached)`);
  }
  if (timings && timings.image_encode_ms) parts.push(`image ${Math.round(timings.image_encode_ms)} ms`);
  s.textContent = parts.join(" · ");
  div.append(s);
}

function showError(div, message) {
  const e = document.createElement("span");
  e.className = "error";
  e.textContent = (div.querySelector(".text").textContent ? "\n" : "") + message;
  div.append(e);
}

// ---- the API -------------------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function askKey(again) {
  const key = window.prompt(again ? "That API key was refused. API key:" : "This server needs an API key:");
  if (key) localStorage.setItem(KEY_STORE, key.trim());
  return !!key;
}

// fetch, asking for the API key (once, then again only if it is refused)
async function api(path, init) {
  for (let attempt = 0; ; attempt++) {
    const resp = await fetch(path, { ...init, headers: headers() });
    if (resp.status !== 401 || attempt >= 2) return resp;
    if (!askKey(attempt > 0 || !!localStorage.getItem(KEY_STORE))) return resp;
  }
}

async function errorText(resp) {
  try {
    const j = await resp.json();
    return (j.error && (j.error.message || j.error)) || resp.statusText;
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let m;
    while ((m = /\r?\n\r?\n/.exec(buf))) {
      const block = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield data;
    }
  }
}

// ---- asking ----------------------------------------------------------------------------------------------
async function send() {
  if (state.controller) return;
  const text = $("prompt").value.trim();
  if (!text && !state.pendingImage) return;
  const image = state.pendingImage;
  const content = image ? [{ type: "image_url", image_url: { url: image } }, { type: "text", text }] : text;
  state.messages.push({ role: "user", content });
  addMessage("user", text, image);
  if (image) state.lastImage = image;
  clearAttachment();
  $("prompt").value = "";

  const div = addMessage("assistant", "");
  div.classList.add("streaming");
  const out = div.querySelector(".text");
  let answer = "";
  let usage = null;
  let timings = null;
  let finished = false;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);

  const body = {
    model: state.model || "default", stream: true, stream_options: { include_usage: true },
    messages: ($("system").value.trim() ? [{ role: "system", content: $("system").value.trim() }] : [])
      .concat(state.messages),
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
  };
  try {
    const resp = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body),
      signal: controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const data of sseEvents(resp)) {
      if (data === "[DONE]") { finished = true; break; }
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(obj.error.message || String(obj.error));
      if (obj.choices && obj.choices.length) {
        const piece = obj.choices[0].delta && obj.choices[0].delta.content;
        if (piece) {
          answer += piece;
          out.textContent = answer;
          div.scrollIntoView({ block: "end" });
        }
      }
      if (obj.usage) { usage = obj.usage; timings = obj.timings || null; }
    }
    if (!finished) throw new Error("the answer ended early (connection lost)");
  } catch (e) {
    if (e.name === "AbortError") {
      showError(div, "(stopped)");
    } else {
      showError(div, String(e.message || e));
      if (!answer) state.messages.pop();  // the question was not answered: leave it out of the history
    }
  } finally {
    state.controller = null;
    setBusy(false);
    div.classList.remove("streaming");
  }
  if (answer || finished) state.messages.push({ role: "assistant", content: answer });
  const boxes = parseBoxes(answer);
  if (boxes.length && state.lastImage) {
    const colorOf = drawBoxes(div, state.lastImage, boxes, text);
    renderAnswer(out, answer, boxes, colorOf);
  }
  if (usage) showStats(div, usage, timings);
  div.classList.add("done");
  div.scrollIntoView({ block: "end" });
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  stop();
  state.messages = [];
  state.lastImage = null;
  clearAttachment();
  $("log").textContent = "";
}

// ---- pictures ----------------------------------------------------------------------------------------------
function attach(file) {
  if (!file || !file.type.startsWith("image/")) return;
  const r = new FileReader();
  r.onload = () => {
    state.pendingImage = r.result;
    $("thumb").src = r.result;
    $("attachment").hidden = false;
  };
  r.readAsDataURL(file);
}

function clearAttachment() {
  state.pendingImage = null;
  $("attachment").hidden = true;
  $("thumb").removeAttribute("src");
  $("file-input").value = "";
}

// ---- start --------------------------------------------------------------------------------------------------
async function init() {
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("settings-button").addEventListener("click", () => {
    const s = $("settings");
    s.hidden = !s.hidden;
    $("settings-button").setAttribute("aria-expanded", String(!s.hidden));
  });
  $("forget-key").addEventListener("click", () => localStorage.removeItem(KEY_STORE));
  $("file-input").addEventListener("change", (e) => attach(e.target.files[0]));
  $("remove-image").addEventListener("click", clearAttachment);
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData ? e.clipboardData.items : []) {
      if (item.kind === "file" && item.type.startsWith("image/")) { attach(item.getAsFile()); e.preventDefault(); }
    }
  });
  let depth = 0;
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop-overlay").hidden = false; });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop-overlay").hidden = true; } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop-overlay").hidden = true;
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) attach(f);
  });

  try {
    const cfg = await (await fetch("/page-config")).json();
    state.auth = cfg.auth;
    state.model = cfg.model;
    $("model-name").textContent = cfg.model;
    if (cfg.auth && !localStorage.getItem(KEY_STORE)) askKey(false);
    const resp = await api("/v1/models", { method: "GET" });
    if (resp.ok) {
      const m = (await resp.json()).data[0];
      state.model = m.id;
      $("model-name").textContent = `${m.id} · ${m.meta.n_ctx} positions`;
      if (!m.input_modalities.includes("image")) $("pick").hidden = true;
    }
  } catch (e) {
    $("model-name").textContent = "(server not answering)";
  }
  document.body.dataset.ready = "1";
}

init();
