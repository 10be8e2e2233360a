// The web chat page: draws a conversation, streams replies into it, and offers Stop and
// Resume / Keep / Discard. Every bit of text from the server (stored or streaming) reaches
// the page through textContent or Markdown.render (DOM nodes, never HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  context: null, // the conversation shown
  pinned: true, // follow the end of the conversation while replies stream
  watching: new Map(), // reply id -> { item, source }
};
const log = $("log");

// -- talking to the server ------------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = {};
  try {
    data = await response.json();
  } catch (_) {
    // an empty or non-JSON body: the status says enough
  }
  if (!response.ok) {
    const error = new Error(data.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- drawing --------------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One message on the page: its element, its body, and (for replies) its Markdown text.
function newItem(kind, before = null) {
  const el = element("article", "msg " + kind);
  const body = element("div", "body");
  el.append(body);
  $("messages").insertBefore(el, before);
  $("empty").hidden = true;
  return { el, body, text: "", replyId: null };
}

function renderBody(item) {
  item.body.replaceChildren(Markdown.render(item.text));
  if (item.el.classList.contains("streaming")) {
    // The cursor goes after the last word, inside the innermost last block.
    let node = item.body;
    while (node.lastElementChild && !["BR", "HR"].includes(node.lastElementChild.tagName)) {
      node = node.lastElementChild;
    }
    node.append(element("span", "cursor"));
  }
}

const dirty = new Set();
let frame = 0;

// Render a streaming reply at most once per frame, then keep the end in view if pinned.
function repaint(item) {
  dirty.add(item);
  if (!frame) {
    frame = requestAnimationFrame(() => {
      frame = 0;
      for (const it of dirty) renderBody(it);
      dirty.clear();
      follow();
    });
  }
}

function formatTokens(n) {
  return new Intl.NumberFormat("en").format(n || 0);
}

// The line under a reply: model, tokens in and out, cost (unknown says why in its title).
function setMeta(item, usage, partial) {
  let meta = item.el.querySelector(".meta");
  if (!meta) {
    meta = element("div", "meta");
    item.el.append(meta);
  }
  const parts = [];
  if (partial) parts.push(element("span", "partial", "kept as it was cut"));
  if (usage) {
    if (usage.model) parts.push(element("span", "model", usage.model));
    parts.push(element("span", "tokens-in", formatTokens(usage.input_tokens) + " in"));
    parts.push(element("span", "tokens-out", formatTokens(usage.output_tokens) + " out"));
    const cost = element(
      "span",
      "cost",
      usage.cost == null ? "cost unknown" : "$" + Number(usage.cost).toFixed(4)
    );
    cost.title = usage.cost == null ? usage.cost_note || "" : "$" + usage.cost + " (genai-prices)";
    parts.push(cost);
  }
  meta.replaceChildren(...parts);
  meta.hidden = parts.length === 0;
  follow(); // the line may have made the reply taller: keep the end in view if following
}

function drawAssistant(item, message) {
  item.el.className = "msg assistant";
  item.el.querySelector(".note")?.remove();
  item.el.querySelector(".actions")?.remove();
  item.text = message.text;
  item.replyId = message.reply_id;
  item.el.dataset.record = message.record;
  renderBody(item);
  setMeta(item, message.usage, message.partial);
}

// An interrupted reply: its text so far, why it stopped, and what can be done with it.
function drawInterrupted(item, box) {
  item.el.className = "msg interrupted";
  item.el.dataset.checkpoint = box.checkpoint;
  item.replyId = box.reply_id;
  item.text = box.text;
  renderBody(item);
  item.el.querySelector(".note")?.remove();
  item.el.querySelector(".actions")?.remove();
  const note = element(
    "p",
    "note",
    `Reply ${box.reason}. Resume it, keep it as it is, or discard it.`
  );
  item.el.prepend(note);
  const actions = element("div", "actions");
  const buttons = [
    ["resume", "Resume", () => resume(item, box)],
    ["keep", "Keep", () => keep(item, box)],
    ["discard", "Discard", () => discard(item, box)],
  ];
  for (const [name, label, act] of buttons) {
    if (name === "keep" && !box.text) continue; // nothing to keep
    const button = element("button", name, label);
    button.type = "button";
    button.dataset.action = name;
    button.addEventListener("click", async () => {
      for (const b of actions.querySelectorAll("button")) b.disabled = true;
      try {
        await act();
      } catch (error) {
        setStatus(error.message);
        await load(ui.context);
      }
    });
    actions.append(button);
  }
  item.el.append(actions);
  setMeta(item, box.usage, false);
}

function draw(entry) {
  if (entry.kind === "user") {
    const item = newItem("user");
    item.body.textContent = entry.text;
    item.el.dataset.record = entry.record;
  } else if (entry.kind === "assistant") {
    drawAssistant(newItem("assistant"), entry);
  } else if (entry.kind === "tool") {
    newItem("tool").body.textContent = "called " + entry.name;
  } else if (entry.kind === "interrupted") {
    drawInterrupted(newItem("interrupted"), entry);
  } else if (entry.kind === "streaming") {
    watch(entry.reply_id, newItem("assistant"));
  }
}

// -- following the end ----------------------------------------------------------------------

function atBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

// Scroll to the end if the reader is there; leave them alone once they scrolled up.
function follow() {
  if (ui.pinned) log.scrollTop = log.scrollHeight;
  $("jump").hidden = ui.pinned || atBottom();
}

log.addEventListener("scroll", () => {
  ui.pinned = atBottom();
  $("jump").hidden = ui.pinned;
});

$("jump").addEventListener("click", () => {
  ui.pinned = true;
  follow();
});

// -- replies --------------------------------------------------------------------------------

function streaming() {
  return ui.watching.size > 0;
}

function setComposer() {
  $("send").hidden = streaming();
  $("stop").hidden = !streaming();
  $("stop").disabled = false;
}

// Follow a reply over server-sent events: all of it so far, then live, then how it ended.
function watch(replyId, item) {
  item.replyId = replyId;
  item.text = "";
  item.el.classList.add("streaming");
  item.el.dataset.reply = replyId;
  const source = new EventSource("/api/watch?reply=" + encodeURIComponent(replyId));
  ui.watching.set(replyId, { item, source });
  setComposer();
  setStatus("streaming…");
  const end = () => {
    source.close();
    if (ui.watching.get(replyId)?.source === source) ui.watching.delete(replyId);
    dirty.delete(item);
    item.el.classList.remove("streaming");
    delete item.el.dataset.reply;
    setComposer();
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "text") {
      item.text += event.text;
      repaint(item);
    } else if (event.type === "rewind") {
      item.text = item.text.slice(0, event.length); // taken over: it goes on from there
      repaint(item);
    } else if (event.type === "status") {
      setStatus(event.text);
    } else if (event.type === "usage") {
      setMeta(item, event.usage, false);
    } else if (event.type === "done") {
      end();
      if (event.message) drawAssistant(item, event.message);
      follow();
      setStatus("reply stored");
    } else if (event.type === "interrupted") {
      end();
      drawInterrupted(item, event.box);
      follow();
      setStatus("reply interrupted: resume, keep or discard it");
    } else {
      end();
      setStatus(event.message || "the reply is gone");
      load(ui.context);
    }
  };
  // The connection broke (a worker stopped, the network went): EventSource reconnects on its
  // own, to whichever worker answers, sending the id of the last event it got (the position
  // of the text shown), and the reply goes on from there. If it gives up (the server said
  // no), redraw the conversation from the server instead, once it answers.
  source.onopen = () => {
    if (ui.watching.get(replyId)?.source === source) setStatus("streaming…");
  };
  source.onerror = () => {
    if (ui.watching.get(replyId)?.source !== source) return;
    if (source.readyState === EventSource.CONNECTING) {
      setStatus("connection lost; reconnecting…");
      return;
    }
    end();
    setStatus("connection lost; reloading the conversation…");
    setTimeout(() => load(ui.context).catch((e) => setStatus(e.message)), 1000);
  };
}

async function send(prompt) {
  const context = ui.context;
  const item = newItem("user");
  item.body.textContent = prompt;
  ui.pinned = true;
  follow();
  let reply;
  try {
    reply = await api("POST", "/api/send", { context, prompt });
  } catch (error) {
    item.el.remove();
    $("prompt").value = prompt;
    setStatus(error.message);
    return;
  }
  if (context !== ui.context) return;
  watch(reply.reply_id, newItem("assistant"));
  follow();
}

async function resume(item, box) {
  const { reply_id } = await api("POST", "/api/resume", {
    context: ui.context,
    checkpoint: box.checkpoint,
  });
  item.el.className = "msg assistant";
  item.el.querySelector(".note")?.remove();
  item.el.querySelector(".actions")?.remove();
  delete item.el.dataset.checkpoint;
  watch(reply_id, item);
}

async function keep(item, box) {
  const { record } = await api("POST", "/api/keep", {
    context: ui.context,
    checkpoint: box.checkpoint,
  });
  delete item.el.dataset.checkpoint;
  drawAssistant(item, {
    text: box.text,
    record,
    reply_id: box.reply_id,
    partial: true,
    usage: box.usage,
  });
  setStatus("kept as it was");
}

async function discard(item, box) {
  await api("POST", "/api/discard", { context: ui.context, checkpoint: box.checkpoint });
  item.el.remove();
  setStatus("reply discarded");
}

async function stop() {
  $("stop").disabled = true;
  for (const replyId of [...ui.watching.keys()]) {
    try {
      await api("POST", "/api/stop", { reply_id: replyId });
    } catch (error) {
      setStatus(error.message); // it ended meanwhile: its watch says how
    }
  }
}

// -- conversations --------------------------------------------------------------------------

function unwatchAll() {
  for (const { source, item } of ui.watching.values()) {
    source.close();
    item.el.classList.remove("streaming");
  }
  ui.watching.clear();
  dirty.clear();
  setComposer();
}

async function load(name) {
  let state;
  try {
    state = await api("GET", "/api/state?context=" + encodeURIComponent(name));
  } catch (error) {
    if (error.status !== 404) throw error;
    setStatus(`no conversation named “${name}”`);
    return load((await api("GET", "/api/contexts")).default);
  }
  unwatchAll();
  ui.context = state.context;
  $("context").value = state.context;
  document.title = state.context + " · rxcontext web chat";
  const url = new URL(location.href);
  url.searchParams.set("context", state.context);
  history.replaceState(null, "", url);
  $("messages").replaceChildren();
  for (const entry of state.items) draw(entry);
  $("empty").hidden = state.items.length > 0;
  ui.pinned = true;
  follow();
  if (!streaming()) setStatus(state.items.some((e) => e.kind === "interrupted")
    ? "a reply was interrupted: resume, keep or discard it"
    : "ready");
  document.body.dataset.loaded = state.context;
}

async function loadContexts(selected) {
  const { contexts, default: fallback } = await api("GET", "/api/contexts");
  const select = $("context");
  select.replaceChildren(
    ...contexts.map((c) => {
      const option = element("option", "", c.name);
      option.value = c.name;
      return option;
    })
  );
  select.value = selected || fallback;
  return fallback;
}

$("context").addEventListener("change", () => load($("context").value));

function showNewContext(show) {
  $("new-context-form").hidden = !show;
  $("new-context").hidden = show;
  if (show) $("new-context-name").focus();
}

$("new-context").addEventListener("click", () => showNewContext(true));
$("new-context-cancel").addEventListener("click", () => showNewContext(false));
$("new-context-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const { context } = await api("POST", "/api/contexts", { name: $("new-context-name").value });
    $("new-context-name").value = "";
    showNewContext(false);
    await loadContexts(context);
    await load(context);
    $("prompt").focus();
  } catch (error) {
    setStatus(error.message);
  }
});

// -- the composer ---------------------------------------------------------------------------

function fitPrompt() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = Math.min(prompt.scrollHeight + 2, 160) + "px";
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim() || streaming()) return;
  $("prompt").value = "";
  fitPrompt();
  send(prompt);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("prompt").addEventListener("input", fitPrompt);
$("stop").addEventListener("click", stop);

(async () => {
  try {
    const wanted = new URLSearchParams(location.search).get("context");
    const fallback = await loadContexts(wanted);
    await load(wanted || fallback);
  } catch (error) {
    setStatus("cannot reach the server: " + error.message);
  }
})();
