// The gateway's playground and console: plain browser JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { controller: null, chat: [], lastTokens: {}, lastPoll: 0 };

// ---------------------------------------------------------------- API key and fetch

$("api-key").value = localStorage.getItem("gateway-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("gateway-api-key", $("api-key").value.trim());
  refresh();
});

function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function errorText(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return `${response.status}: ${body.detail || (body.error && body.error.message) || text}`;
  } catch {
    return `${response.status}: ${text}`;
  }
}

async function getJSON(url) {
  const r = await fetch(url, { headers: headers(false) });
  if (!r.ok) throw new Error(await errorText(r));
  return r.json();
}

// ---------------------------------------------------------------- tabs

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === tab.dataset.tab));
  });
}

// ---------------------------------------------------------------- groups

function fillSelect(select, names) {
  const keep = select.value;
  select.innerHTML = "";
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.appendChild(option);
  }
  if (names.includes(keep)) select.value = keep;
}

async function refresh() {
  try {
    const status = await getJSON("/status");
    const readers = Object.values(status.live_readers);
    const groupsFor = (task) => [...new Set(readers.filter((r) => r.task === task).map((r) => r.consumer_group))];
    fillSelect($("group"), groupsFor("generate"));
    fillSelect($("embed-group"), groupsFor("embed"));
    renderConsole(status);
    $("console-error").textContent = "";
  } catch (e) {
    $("console-error").textContent = e.message;
  }
}

// ---------------------------------------------------------------- playground

$("mode").addEventListener("change", () => {
  $("chat-log").hidden = $("mode").value !== "chat";
});

function numberOf(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function takeoffBody(prompt) {
  const body = {
    text: prompt,
    consumer_group: $("group").value,
    sampling_temperature: numberOf("temperature"),
    sampling_topk: numberOf("top-k"),
    sampling_topp: numberOf("top-p"),
    max_new_tokens: numberOf("max-new"),
    min_new_tokens: numberOf("min-new"),
    use_chat_template: $("chat-template").checked,
  };
  if ($("regex").value.trim()) body.regex_string = $("regex").value.trim();
  else if ($("schema").value.trim()) body.json_schema = JSON.parse($("schema").value);
  return body;
}

function chatBody(messages) {
  const body = {
    model: $("group").value,
    messages,
    stream: true,
    temperature: numberOf("temperature"),
    top_p: numberOf("top-p"),
    top_k: numberOf("top-k"),
    max_tokens: numberOf("max-new"),
    min_tokens: numberOf("min-new"),
  };
  if ($("regex").value.trim()) body.structured_outputs = { regex: $("regex").value.trim() };
  else if ($("schema").value.trim()) body.structured_outputs = { json: JSON.parse($("schema").value) };
  return body;
}

// Server-Sent Events out of a fetch body: yields {event, data} as they arrive.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let val = i < 0 ? "" : line.slice(i + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

function showStats(started, firstAt, tokens) {
  const now = performance.now();
  const parts = [];
  if (firstAt) parts.push(`time to first token ${(firstAt - started).toFixed(0)} ms`);
  if (tokens > 1 && firstAt) parts.push(`${((tokens - 1) / ((now - firstAt) / 1000)).toFixed(1)} tokens/s`);
  parts.push(`${tokens} pieces`);
  $("stats").textContent = parts.join(" · ");
}

async function send() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) return;
  $("error").textContent = "";
  $("output").textContent = "";
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const chat = $("mode").value === "chat";
  const started = performance.now();
  let firstAt = null;
  let tokens = 0;
  let text = "";
  try {
    let url, body;
    if (chat) {
      state.chat.push({ role: "user", content: prompt });
      url = "/v1/chat/completions";
      body = chatBody(state.chat);
    } else {
      url = "/generate_stream";
      body = takeoffBody(prompt);
    }
    const r = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!r.ok) throw new Error(await errorText(r));
    for await (const { event, data } of sseEvents(r)) {
      let piece = null;
      if (chat) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta ? chunk.choices[0].delta.content : null;
      } else if (event === "end") {
        break;
      } else if (event === "error") {
        throw new Error(JSON.parse(data).detail);
      } else if (event === "message") {
        piece = data;
      }
      if (!piece) continue;
      if (!firstAt) firstAt = performance.now();
      tokens += 1;
      text += piece;
      $("output").textContent = text;
      showStats(started, firstAt, tokens);
    }
    if (chat) {
      state.chat.push({ role: "assistant", content: text });
      renderChat();
      $("prompt").value = "";
    }
  } catch (e) {
    if (e.name === "AbortError") {
      $("stats").textContent += " · stopped";
      if (chat) state.chat.pop();
    } else {
      $("error").textContent = e.message;
      if (chat && state.chat.length && state.chat[state.chat.length - 1].role === "user") state.chat.pop();
    }
  } finally {
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function renderChat() {
  const log = $("chat-log");
  log.innerHTML = "";
  for (const m of state.chat) {
    const div = document.createElement("div");
    div.className = `msg ${m.role}`;
    div.textContent = m.content;
    log.appendChild(div);
  }
}

$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send();
});

// ---------------------------------------------------------------- embeddings

$("compare").addEventListener("click", async () => {
  $("embed-error").textContent = "";
  $("similarity").textContent = "";
  try {
    const r = await fetch("/v1/embeddings", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ model: $("embed-group").value, input: [$("text-a").value, $("text-b").value] }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    const [a, b] = (await r.json()).data.map((d) => d.embedding);
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    $("similarity").textContent = `cosine similarity ${(dot / Math.sqrt(na * nb)).toFixed(4)} (${a.length} dimensions)`;
  } catch (e) {
    $("embed-error").textContent = e.message;
  }
});

// ---------------------------------------------------------------- console

function managementURL() {
  return $("mgmt-url").value.trim().replace(/\/$/, "");
}
$("mgmt-url").value = `${location.protocol}//${location.hostname}:${Number(location.port || 80) + 1}`;

function renderConsole(status) {
  const now = performance.now();
  const seconds = state.lastPoll ? (now - state.lastPoll) / 1000 : 0;
  state.lastPoll = now;
  const readers = Object.values(status.live_readers);
  const inFlight = readers.reduce((n, r) => n + (r.requests_in_flight || 0), 0);
  $("summary").textContent = `${status.status} · up ${Math.round(status.uptime_seconds)} s · ${readers.length} readers · ${inFlight} requests in flight`;
  const body = document.querySelector("#readers tbody");
  body.innerHTML = "";
  for (const r of readers) {
    const tokens = r.generated_tokens || 0;
    const before = state.lastTokens[r.reader_id];
    const rate = seconds && before !== undefined ? ((tokens - before) / seconds).toFixed(1) : "";
    state.lastTokens[r.reader_id] = tokens;
    const tr = document.createElement("tr");
    const cells = [r.reader_id, r.consumer_group, r.task, r.model_name, r.state, r.requests_in_flight,
      r.engine_requests ?? "", rate];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value ?? "";
      if (i === 4) {
        td.className = `state-${r.state}`;
        if (r.error) td.title = r.error;
      }
      tr.appendChild(td);
    });
    const td = document.createElement("td");
    const remove = document.createElement("button");
    remove.textContent = "Remove";
    remove.addEventListener("click", () => removeReader(r.reader_id));
    td.appendChild(remove);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

async function removeReader(id) {
  if (!confirm(`Remove reader ${id}? Its requests in flight finish first.`)) return;
  const r = await fetch(`${managementURL()}/reader/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers(false) });
  $("console-error").textContent = r.ok ? "" : await errorText(r);
  refresh();
}

$("add-reader").addEventListener("click", async () => {
  const body = { model_name: $("new-model").value, consumer_group: $("new-group").value, device: $("new-device").value };
  const r = await fetch(`${managementURL()}/reader?wait=false`, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  $("console-error").textContent = r.ok ? "" : await errorText(r);
  refresh();
});

refresh();
setInterval(refresh, 2000);
