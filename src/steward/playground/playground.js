// Steward playground: a page that exercises the API as an app would, with no build step.
// Everything goes through the public API with the visitor's own tokens; the tokens, the
// current conversation and an unfinished run live in sessionStorage, so a reload resumes.
"use strict";

const API = "/api/v1";
const SCOPES = ["todos:read", "todos:write", "assistant", "knowledge:read", "knowledge:write",
  "profile:write"];
const $ = (id) => document.getElementById(id);

// --- storage ------------------------------------------------------------------------------
const saved = {
  get(key) {
    try { return JSON.parse(sessionStorage.getItem(`steward.${key}`)); } catch { return null; }
  },
  set(key, value) {
    if (value === null || value === undefined) sessionStorage.removeItem(`steward.${key}`);
    else sessionStorage.setItem(`steward.${key}`, JSON.stringify(value));
  },
};

// --- HTTP ---------------------------------------------------------------------------------
class Problem extends Error {
  constructor(status, body) {
    const detail = (body && (body.detail || body.title)) || `HTTP ${status}`;
    const fields = body && Array.isArray(body.errors)
      ? body.errors.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ") : "";
    super(fields ? `${detail} (${fields})` : detail);
    this.status = status;
    this.body = body;
  }
}

let refreshing = null;

async function refreshTokens() {
  const tokens = saved.get("tokens");
  if (!tokens) return false;
  refreshing ??= fetch(`${API}/auth/refresh`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ refresh_token: tokens.refresh_token }),
  }).then(async (response) => {
    if (!response.ok) return false;
    saved.set("tokens", await response.json());
    return true;
  }).finally(() => { refreshing = null; });
  return refreshing;
}

// A call to the API with the current access token; refreshes it once on 401.
async function call(path, { method = "GET", json, form, headers = {}, signal, retried } = {}) {
  const tokens = saved.get("tokens");
  const init = { method, headers: { ...headers }, signal };
  if (tokens) init.headers.authorization = `Bearer ${tokens.access_token}`;
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = new URLSearchParams(form);
  }
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
  if (response.status === 401 && tokens && !retried && await refreshTokens()) {
    return call(path, { method, json, form, headers, signal, retried: true });
  }
  if (response.status === 401 && tokens && !path.startsWith(`${API}/auth`)) signedOut();
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new Problem(response.status, body);
  }
  return response;
}

async function callJSON(path, options) {
  const response = await call(path, options);
  return response.status === 204 ? null : response.json();
}

// Server-sent events read with fetch (EventSource cannot send Authorization). Calls
// onEvent({id, event, data}) for each; resolves when the server ends the stream.
async function readEvents(path, { lastEventId, signal, onEvent }) {
  const headers = { accept: "text/event-stream" };
  if (lastEventId) headers["last-event-id"] = lastEventId;
  const response = await call(path, { headers, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: null, event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") message.id = text;
        else if (field === "event") message.event = text;
        else if (field === "data") message.data += message.data ? `\n${text}` : text;
      }
      if (!message.data) continue;
      let data;
      try { data = JSON.parse(message.data); } catch { data = message.data; }
      onEvent({ id: message.id, event: message.event, data });
    }
  }
}

// --- small DOM helpers --------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function showError(id, error) {
  $(id).textContent = error ? (error.message || String(error)) : "";
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = !text;
}

async function guarded(errorId, work) {
  showError(errorId, null);
  try { await work(); } catch (error) { if (error.name !== "AbortError") showError(errorId, error); }
}

// --- account ------------------------------------------------------------------------------
async function signIn(email, password) {
  const response = await fetch(`${API}/auth/token`, {
    method: "POST",
    headers: { "x-device-name": "Playground", "x-device-platform": "web" },
    body: new URLSearchParams({ username: email, password }),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Problem(response.status, body);
  saved.set("tokens", body);
}

async function signUp(email, password) {
  await callJSON("auth/register", { method: "POST", json: { email, password } });
  await signIn(email, password);
}

function signedOut() {
  saved.set("tokens", null);
  saved.set("run", null);
  saved.set("conversation", null);
  live.stop();
  $("app").hidden = true;
  $("account").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
}

async function signOut() {
  const tokens = saved.get("tokens");
  if (tokens) {
    await fetch(`${API}/auth/logout`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: tokens.refresh_token }),
    }).catch(() => {});
  }
  signedOut();
}

async function enter() {
  const me = await callJSON("users/me");
  $("who").textContent = `Signed in as ${me.email}${me.role === "admin" ? " (admin)" : ""}`;
  $("account").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  await Promise.all([todos.load(), docs.load(), keys.load(), chat.restore()]);
  live.start();
}

// --- tabs ---------------------------------------------------------------------------------
function selectTab(tab, focus = false) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  saved.set("tab", tab.id);
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const next = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (next) selectTab(tabs[(index + next + tabs.length) % tabs.length], true);
      if (event.key === "Home") selectTab(tabs[0], true);
      if (event.key === "End") selectTab(tabs[tabs.length - 1], true);
    });
  }
  const previous = saved.get("tab");
  if (previous && $(previous)) selectTab($(previous));
}

// --- todos --------------------------------------------------------------------------------
const todos = {
  items: new Map(),

  async load() {
    const page = await callJSON("todos?limit=100");
    this.items = new Map(page.items.map((todo) => [todo.id, todo]));
    this.render();
  },

  apply(event) {
    if (event.type === "todo.deleted") this.items.delete(event.todo.id);
    else this.items.set(event.todo.id, event.todo);
    this.render();
  },

  render() {
    const list = $("todo-list");
    list.replaceChildren();
    const sorted = [...this.items.values()].sort((a, b) =>
      a.done - b.done || b.created_at.localeCompare(a.created_at));
    for (const todo of sorted) {
      const box = el("input", {
        type: "checkbox", id: `todo-${todo.id}`, checked: todo.done ? "" : null,
        onchange: () => guarded("todo-error", () =>
          call(`todos/${todo.id}/${box.checked ? "complete" : "reopen"}`, { method: "POST" })),
      });
      list.append(el("li", { class: todo.done ? "done" : "", "data-id": todo.id },
        box,
        el("label", { for: `todo-${todo.id}`, class: "grow" }, todo.title),
        el("button", {
          type: "button", class: "icon", "aria-label": `Delete “${todo.title}”`,
          onclick: () => guarded("todo-error", () => call(`todos/${todo.id}`, { method: "DELETE" })),
        }, "✕")));
    }
    $("todo-empty").hidden = this.items.size > 0;
  },

  async add(title) {
    // The realtime channel shows it (in every open tab); the answer shows it here at once.
    const todo = await callJSON("todos", {
      method: "POST", json: { title }, headers: { "idempotency-key": crypto.randomUUID() },
    });
    this.items.set(todo.id, todo);
    this.render();
  },
};

// --- live events --------------------------------------------------------------------------
const live = {
  controller: null,
  lastEventId: null,

  start() {
    this.stop();
    this.controller = new AbortController();
    this.loop(this.controller.signal);
  },

  stop() {
    this.controller?.abort();
    this.controller = null;
    $("live").textContent = "offline";
    $("live").classList.remove("on");
  },

  async loop(signal) {
    let delay = 1000;
    while (!signal.aborted) {
      try {
        await readEvents(`${API}/realtime/events`, {
          signal, lastEventId: this.lastEventId, onEvent: (message) => this.on(message),
        });
        delay = 1000;
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 401 || error.status === 403) return;
      }
      $("live").textContent = "reconnecting…";
      $("live").classList.remove("on");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  },

  on({ id, event, data }) {
    if (id) this.lastEventId = id;
    if (event === "ready") {
      $("live").textContent = "live";
      $("live").classList.add("on");
    } else if (event === "resync") {
      todos.load();
      docs.load();
    } else if (event.startsWith("todo.")) {
      todos.apply(data);
    } else if (event === "knowledge.document") {
      docs.apply(data.document);
    } else if (event === "knowledge.document.deleted") {
      docs.items.delete(data.document_id);
      docs.render();
    } else if (event === "notification") {
      notice(`Notification: ${data.title || data.type || "new"}`);
    }
  },
};

// --- assistant ----------------------------------------------------------------------------
const chat = {
  controller: null,

  bubble(role, text = "") {
    const body = el("div", { class: "text" }, text);
    const item = el("li", { class: `message ${role}` },
      el("span", { class: "role" }, role === "user" ? "You" : "Assistant"), body);
    $("messages").append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  },

  async restore() {
    const conversation = saved.get("conversation");
    $("messages").replaceChildren();
    if (conversation) {
      try {
        const page = await callJSON(`assistant/conversations/${conversation}/messages?limit=100`);
        const pending = saved.get("run");
        for (const message of page.items) {
          // The answer of a run still being followed is drawn by follow(), not twice.
          if (pending && message.role === "assistant" && message.run_id === pending.id) continue;
          if (message.role === "user" || (message.role === "assistant" && message.content)) {
            this.bubble(message.role, message.content);
          }
        }
      } catch (error) {
        if (error.status !== 404) throw error;
        saved.set("conversation", null);
      }
    }
    const run = saved.get("run");
    if (run) this.follow(run, this.bubble("assistant", run.text));
  },

  async conversation() {
    let id = saved.get("conversation");
    if (!id) {
      const created = await callJSON("assistant/conversations", {
        method: "POST", json: { title: "Playground" },
      });
      id = created.id;
      saved.set("conversation", id);
    }
    return id;
  },

  async send(content) {
    const conversation = await this.conversation();
    this.bubble("user", content);
    // A background run: a worker executes it and any reader follows its events, so a page
    // reload (or a dropped connection) resumes it instead of cancelling it.
    const run = await callJSON(`assistant/conversations/${conversation}/messages`, {
      method: "POST", json: { content, background: true },
    });
    const state = { id: run.id, lastEventId: null, text: "", reasoning: "", tools: [],
      citations: [], provider: "", usage: null };
    saved.set("run", state);
    await this.follow(state, this.bubble("assistant"));
  },

  async follow(state, item) {
    this.controller = new AbortController();
    $("send").disabled = true;
    $("stop").disabled = false;
    item.setAttribute("aria-busy", "true");
    item.dataset.run = state.id;
    const text = item.querySelector(".text");
    for (const tool of state.tools) this.showTool(item, tool);
    if (state.reasoning) this.showReasoning(item, state.reasoning, !state.text);
    if (state.provider) $("provider").textContent = state.provider;
    let finished = false;
    const waiting = setTimeout(() => {
      if (!state.text && !state.tools.length) {
        text.textContent = "Queued: waiting for a worker (steward run starts one)…";
      }
    }, 4000);
    try {
      await readEvents(`${API}/assistant/runs/${state.id}/events`, {
        lastEventId: state.lastEventId,
        signal: this.controller.signal,
        onEvent: ({ id, event, data }) => {
          if (event === "token") {
            if (!state.text && state.reasoning) this.showReasoning(item, state.reasoning, false);
            state.text += data.delta;
            text.textContent = state.text;
          } else if (event === "reasoning") {
            // A thinking model's reasoning, shown while it thinks, folded once it answers.
            state.reasoning = (state.reasoning || "") + data.delta;
            this.showReasoning(item, state.reasoning, true);
          } else if (event === "repair") {
            // The answer did not match the requested schema: it is asked again.
            state.text = "";
            text.textContent = "";
            item.insertBefore(el("p", { class: "tool" },
              `↻ asked again: ${data.problems.join("; ")}`.slice(0, 300)), text);
          } else if (event === "usage") {
            state.usage = data;
          } else if (event === "run") {
            state.provider = data.offline
              ? "Offline assistant: no language model is configured (set ASSISTANT_PROVIDERS)."
              : `Provider ${data.provider}, model ${data.model}`;
            $("provider").textContent = state.provider;
          } else if (event === "tool_call" || event === "tool_result") {
            const tool = { event, name: data.name, detail: event === "tool_call"
              ? data.arguments : JSON.stringify(data.result ?? data.error) };
            state.tools.push(tool);
            this.showTool(item, tool);
          } else if (event === "citation") {
            state.citations.push(data);
          } else if (event === "error") {
            item.append(el("p", { class: "error" }, data.detail || "the run failed"));
          } else if (event === "done") {
            finished = true;
          }
          if (id) state.lastEventId = id;
          if (!finished) saved.set("run", state);
        },
      });
    } catch (error) {
      if (error.name !== "AbortError") showError("chat-error", error);
    } finally {
      clearTimeout(waiting);
      item.removeAttribute("aria-busy");
      if (state.citations.length) this.showCitations(item, state.citations);
      if (finished && state.usage) this.showUsage(item, state.usage);
      if (finished) {
        item.dataset.status = "done";
        saved.set("run", null);
      }
      $("send").disabled = false;
      $("stop").disabled = true;
      this.controller = null;
    }
  },

  showTool(item, tool) {
    const label = tool.event === "tool_call" ? `⚙ ${tool.name}` : `↳ ${tool.name}`;
    item.insertBefore(el("p", { class: "tool" }, `${label} ${tool.detail ?? ""}`.slice(0, 300)),
      item.querySelector(".text"));
  },

  showReasoning(item, reasoning, open) {
    let box = item.querySelector(".reasoning");
    if (!box) {
      box = el("details", { class: "reasoning" }, el("summary", {}, "Reasoning"),
        el("p", {}, ""));
      item.insertBefore(box, item.querySelector(".text"));
    }
    box.querySelector("p").textContent = reasoning;
    box.open = open;
  },

  showUsage(item, usage) {
    const parts = [`${usage.total_tokens} tokens`];
    if (usage.reasoning_tokens) parts.push(`${usage.reasoning_tokens} reasoning`);
    if (usage.cached_tokens) parts.push(`${usage.cached_tokens} cached`);
    if (usage.cost !== null && usage.cost !== undefined) {
      parts.push(`${Number(usage.cost.toPrecision(3))} ${usage.currency}`);
    }
    item.append(el("p", { class: "usage" }, parts.join(" · ")));
  },

  showCitations(item, citations) {
    const list = el("ol", { class: "citations", "aria-label": "Sources" });
    for (const citation of citations) {
      list.append(el("li", { value: citation.index },
        el("strong", {}, citation.title), ` — ${citation.snippet}`));
    }
    item.append(list);
  },

  async stop() {
    const run = saved.get("run");
    if (run) await call(`assistant/runs/${run.id}/cancel`, { method: "POST" }).catch(() => {});
  },

  reset() {
    this.controller?.abort();
    saved.set("conversation", null);
    saved.set("run", null);
    $("messages").replaceChildren();
  },
};

// --- knowledge ----------------------------------------------------------------------------
const docs = {
  items: new Map(),

  async load() {
    const page = await callJSON("knowledge/documents?limit=100");
    this.items = new Map(page.items.map((doc) => [doc.id, doc]));
    this.render();
  },

  apply(document) {
    if (!document || !document.id) return;
    const known = this.items.get(document.id);
    // A live event can overtake the upload's own answer (an identical text is ready at
    // once): an older state never replaces a newer one.
    if (known && Date.parse(known.updated_at) > Date.parse(document.updated_at)) return;
    this.items.set(document.id, { ...known, ...document });
    this.render();
  },

  render() {
    const list = $("doc-list");
    list.replaceChildren();
    for (const doc of this.items.values()) {
      list.append(el("li", { "data-id": doc.id, "data-status": doc.status },
        el("span", { class: "grow" }, doc.title),
        el("span", { class: `badge ${doc.status}` }, doc.status),
        el("button", {
          type: "button", class: "icon", "aria-label": `Delete “${doc.title}”`,
          onclick: () => guarded("doc-error", async () => {
            await call(`knowledge/documents/${doc.id}`, { method: "DELETE" });
            this.items.delete(doc.id);
            this.render();
          }),
        }, "✕")));
    }
  },

  async upload(title, text) {
    const doc = await callJSON("knowledge/documents", {
      method: "POST", json: { title, text, media_type: "text/markdown" },
    });
    this.apply(doc);
  },

  async search(q) {
    const results = await callJSON(`knowledge/search?${new URLSearchParams({ q, k: 5 })}`);
    const hits = $("hits");
    hits.replaceChildren();
    if (!results.items.length) hits.append(el("li", { class: "hint" }, "No match."));
    for (const hit of results.items) {
      hits.append(el("li", {},
        el("strong", {}, hit.heading ? `${hit.title} › ${hit.heading}` : hit.title),
        el("p", {}, hit.text.slice(0, 280))));
    }
  },
};

// --- API keys -----------------------------------------------------------------------------
const keys = {
  async load() {
    const page = await callJSON("api-keys");
    const list = $("key-list");
    list.replaceChildren();
    for (const key of page.items.filter((k) => !k.revoked_at)) {
      list.append(el("li", { "data-id": key.id },
        el("span", { class: "grow" }, `${key.name} `, el("code", {}, `${key.prefix}…`)),
        el("span", { class: "hint" }, key.scopes.join(" ")),
        el("button", {
          type: "button", class: "icon", "aria-label": `Revoke key “${key.name}”`,
          onclick: () => guarded("key-error", async () => {
            await call(`api-keys/${key.id}`, { method: "DELETE" });
            await this.load();
          }),
        }, "✕")));
    }
  },

  async create(name, scopes) {
    const created = await callJSON("api-keys", { method: "POST", json: { name, scopes } });
    $("key-secret-value").textContent = created.secret;
    $("key-secret").hidden = false;
    await this.load();
  },
};

// --- wiring -------------------------------------------------------------------------------
function wire() {
  setUpTabs();
  for (const scope of SCOPES) {
    const id = `scope-${scope.replace(":", "-")}`;
    $("key-scopes").append(el("span", { class: "scope" },
      el("input", { type: "checkbox", id, value: scope, checked: scope.endsWith("read") ? "" : null }),
      el("label", { for: id }, scope)));
  }
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("account-error", async () => {
      await signIn($("email").value.trim(), $("password").value);
      await enter();
    });
  });
  $("sign-up").addEventListener("click", () => guarded("account-error", async () => {
    await signUp($("email").value.trim(), $("password").value);
    await enter();
  }));
  $("sign-out").addEventListener("click", signOut);
  $("todo-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const title = $("todo-title").value.trim();
    if (!title) return;
    guarded("todo-error", async () => {
      await todos.add(title);
      $("todo-title").value = "";
    });
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const content = $("chat-input").value.trim();
    if (!content || chat.controller) return;
    $("chat-input").value = "";
    guarded("chat-error", () => chat.send(content));
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
  });
  $("stop").addEventListener("click", () => chat.stop());
  $("new-chat").addEventListener("click", () => chat.reset());
  $("doc-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("doc-error", async () => {
      await docs.upload($("doc-title").value.trim(), $("doc-text").value);
      $("doc-form").reset();
    });
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded("doc-error", () => docs.search($("search-q").value.trim()));
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const scopes = [...$("key-scopes").querySelectorAll("input:checked")].map((box) => box.value);
    guarded("key-error", () => keys.create($("key-name").value.trim(), scopes));
  });
  if (saved.get("tokens")) {
    enter().catch((error) => {
      signedOut();
      showError("account-error", error);
    });
  }
}

document.addEventListener("DOMContentLoaded", wire);
