// voxnp's page: live microphone over WS /v1/realtime (vLLM's dialect) and file
// transcription over POST /v1/audio/transcriptions (server-sent events).
// Every string from the server or a file name is shown as text (textContent), never as HTML.
"use strict";

const RATE = 16000;                    // what the model hears: 16 kHz mono PCM16
const CHUNK = 1600;                    // samples per websocket append (100 ms)
const DELAYS = Array.from({ length: 30 }, (_, i) => 80 * (i + 1));   // ms, the model's range
const DEFAULT_DELAY = 480;
const FORMATS = {                      // download -> [response_format, extension, type]
  txt: ["text", "txt", "text/plain"], srt: ["srt", "srt", "application/x-subrip"],
  vtt: ["vtt", "vtt", "text/vtt"], json: ["verbose_json", "json", "application/json"],
};

const $ = (id) => document.getElementById(id);

// -- settings and errors -----------------------------------------------------

function apiKey() { return $("key").value.trim(); }
function delayMs() { return Number($("delay").value); }
function authHeaders() { return apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}; }

function showError(message) {
  const line = String(message).replace(/\s+/g, " ").trim();    // always one line
  $("error").textContent = line;
  $("error").title = line;
  $("error").hidden = !line;
}

function setupSettings() {
  for (const ms of DELAYS) $("delay").add(new Option(`${ms} ms`, String(ms), false, ms === DEFAULT_DELAY));
  const saved = { delay: sessionStorage.getItem("voxnp.delay"), key: sessionStorage.getItem("voxnp.key") };
  if (saved.delay && DELAYS.includes(Number(saved.delay))) $("delay").value = saved.delay;
  if (saved.key) $("key").value = saved.key;
  $("delay").addEventListener("change", () => { sessionStorage.setItem("voxnp.delay", $("delay").value); showDelay(); });
  $("key").addEventListener("input", () => sessionStorage.setItem("voxnp.key", apiKey()));
  showDelay();
}

function showDelay() { if (!live) $("live-info").textContent = `delay ${delayMs()} ms`; }

// Why a request or socket failed, asked of the server itself (a browser cannot read the
// status of a refused websocket): gone, loading, busy, or the key.
async function diagnose(fallback) {
  let health;
  try {
    const r = await fetch("/health", { cache: "no-store" });
    health = await r.json();
  } catch (e) {
    return "the server cannot be reached: is `voxnp serve` still running?";
  }
  if (health.status !== "ok") return `the server is not ready: ${health.status}`;
  if (health.sessions >= health.max_sessions)
    return `the server is busy: all ${health.max_sessions} sessions are in use; try again shortly`;
  try {
    const r = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
    if (r.status === 401) return "the server needs an API key: enter it under Settings";
  } catch (e) { /* answered above */ }
  return fallback;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return `the server answered ${response.status} ${response.statusText}`;
}

async function checkHealth() {
  try {
    const health = await (await fetch("/health", { cache: "no-store" })).json();
    $("health").textContent = health.status === "ok" ? "ready" : health.status;
  } catch (e) {
    $("health").textContent = "server unreachable";
  }
}

// -- downloads --------------------------------------------------------------

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

function wavBlob(chunks) {          // Int16Array chunks -> a 16 kHz mono PCM16 WAV file
  const n = chunks.reduce((total, c) => total + c.length, 0);
  const view = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, RATE, true); view.setUint32(28, 2 * RATE, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  return new Blob([view.buffer, ...chunks], { type: "audio/wav" });
}

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// -- live: microphone -> worklet -> websocket ---------------------------------

let live = null;                       // the running live session, if any

function setMic(state) {               // idle | connecting | live | finishing
  const mic = $("mic");
  mic.dataset.state = state;
  mic.textContent = { idle: "Start microphone", connecting: "Connecting…", live: "Stop", finishing: "Finishing…" }[state];
  mic.setAttribute("aria-pressed", String(state === "live"));
  mic.disabled = state === "connecting" || state === "finishing";
}

function liveInfo() {
  if (!live) return;
  const seconds = live.samples / RATE;
  $("live-info").textContent = `delay ${live.delay} ms · ${seconds.toFixed(1)} s of audio sent`;
}

async function startLive() {
  showError("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("the browser offers the microphone only to secure pages (https, or this machine's localhost): "
      + "open the page there (an SSH tunnel works) or use the File panel");
    return;
  }
  setMic("connecting");
  const session = live = {
    delay: delayMs(), chunks: [], samples: 0, pending: [], ws: null, ready: false,
    stopping: false, done: false, closed: false,
  };
  $("live-text").textContent = "";
  $("live-copy").disabled = true;
  $("live-wav").hidden = true;
  try {
    session.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    live = null;
    setMic("idle");
    showError(e.name === "NotAllowedError" ? "the microphone was refused: allow it for this page in the browser's site settings"
      : e.name === "NotFoundError" ? "no microphone was found" : `the microphone could not be opened: ${e.message}`);
    return;
  }
  try {
    openSocket(session);
    session.context = new AudioContext();
    await session.context.audioWorklet.addModule("/static/worklet.js");
    session.node = new AudioWorkletNode(session.context, "pcm16-resampler",
      { numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { rate: RATE, chunk: CHUNK } });
    session.node.port.onmessage = (e) => onAudio(session, e.data);
    session.source = session.context.createMediaStreamSource(session.stream);
    session.source.connect(session.node);
  } catch (e) {
    endLive(session, `could not start: ${e.message}`);
  }
}

function openSocket(session) {
  const url = new URL(`/v1/realtime?delay_ms=${session.delay}`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // a browser cannot set headers on a websocket: the key travels as a subprotocol
  const protocols = apiKey() ? ["realtime", `openai-insecure-api-key.${apiKey()}`] : [];
  let ws;
  try {
    ws = session.ws = new WebSocket(url, protocols);
  } catch (e) {
    throw new Error("the API key has characters a websocket cannot carry");
  }
  ws.onmessage = (e) => onEvent(session, e.data);
  ws.onclose = async () => {
    if (session.closed) return;
    const wasReady = session.ready;
    const reason = await diagnose(wasReady ? "the server closed the connection" : "the server refused the connection");
    endLive(session, reason);
  };
}

function onEvent(session, data) {
  let event;
  try { event = JSON.parse(data); } catch (e) { return showError("the server sent a message that is not JSON"); }
  if (event.type === "session.created") {
    session.ready = true;
    session.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));     // start transcribing
    for (const chunk of session.pending) sendChunk(session, chunk);
    session.pending = [];
    if (live === session && !session.stopping) setMic("live");
    if (session.stopping) session.ws.send(JSON.stringify({ type: "input_audio_buffer.commit", final: true }));
  } else if (event.type === "transcription.delta") {
    const text = $("live-text").textContent ? event.delta : event.delta.trimStart();
    $("live-text").append(document.createTextNode(text));
    $("live-text").scrollTop = $("live-text").scrollHeight;
  } else if (event.type === "transcription.done") {
    session.done = true;
    endLive(session, "");
  } else if (event.type === "error") {
    showError(`the server: ${typeof event.error === "string" ? event.error : JSON.stringify(event.error)}`);
  }
}

function sendChunk(session, pcm) {
  session.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(new Uint8Array(pcm.buffer)) }));
}

function onAudio(session, message) {
  if (message.flushed) {
    if (session.ready) session.ws.send(JSON.stringify({ type: "input_audio_buffer.commit", final: true }));
    session.stopping = true;
    return;
  }
  if (session.stopping) return;
  session.chunks.push(message.pcm);
  session.samples += message.pcm.length;
  $("level").value = Math.min(1, 4 * message.level);
  if (session.ready) sendChunk(session, message.pcm); else session.pending.push(message.pcm);
  liveInfo();
}

function stopLive() {                  // the end of the utterance: the rest of the text, then done
  const session = live;
  if (!session) return;
  if (!session.node) return endLive(session, "");
  setMic("finishing");
  session.source.disconnect();
  session.stream.getTracks().forEach((t) => t.stop());
  session.node.port.postMessage("flush");             // its reply sends the final commit
}

function endLive(session, error) {
  if (session.closed) return;
  session.closed = true;
  if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  if (session.context) session.context.close().catch(() => {});
  if (session.ws && session.ws.readyState <= WebSocket.OPEN) session.ws.close();
  if (error) showError(error);
  if (live === session) live = null;
  $("level").value = 0;
  $("live-copy").disabled = !$("live-text").textContent;
  if (session.chunks.length) {
    const wav = $("live-wav");
    if (wav.href) URL.revokeObjectURL(wav.href);
    wav.href = URL.createObjectURL(wavBlob(session.chunks));
    wav.hidden = false;
  }
  $("live-info").textContent = `delay ${session.delay} ms · ${(session.samples / RATE).toFixed(1)} s of audio`
    + (session.done ? " · done" : "");
  setMic("idle");
}

// -- file: upload -> server-sent events -------------------------------------

const file = { current: null, results: {} };   // the last file and its downloads, by format

function audioSeconds(blob) {          // the browser's reading of the file's length (NaN if unknown)
  return new Promise((resolve) => {
    const audio = new Audio();
    const url = URL.createObjectURL(blob);
    const done = (value) => { URL.revokeObjectURL(url); resolve(value); };
    audio.preload = "metadata";
    audio.onloadedmetadata = () => done(audio.duration);
    audio.onerror = () => done(NaN);
    audio.src = url;
  });
}

function transcriptionForm(blob, options) {
  const form = new FormData();
  form.append("file", blob, blob.name || "audio");
  form.append("model", "voxnp");
  form.append("delay_ms", String(file.delay));
  for (const [name, value] of Object.entries(options)) form.append(name, value);
  return form;
}

function setDownloads(enabled) {
  for (const b of $("downloads").querySelectorAll("button")) b.disabled = !enabled;
}

async function transcribeFile(blob) {
  showError("");
  file.current = blob;
  file.results = {};
  file.delay = delayMs();
  setDownloads(false);
  const text = $("file-text");
  text.textContent = "";
  const name = blob.name || "audio";
  $("file-info").textContent = `${name}: transcribing…`;
  const seconds = audioSeconds(blob);
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/audio/transcriptions", {
      method: "POST", headers: authHeaders(), body: transcriptionForm(blob, { stream: "true", response_format: "json" }),
    });
  } catch (e) {
    $("file-info").textContent = `${name}: failed`;
    return showError(await diagnose(`the upload failed: ${e.message}`));
  }
  if (!response.ok) {
    $("file-info").textContent = `${name}: failed`;
    return showError(await errorMessage(response));
  }
  let final = null;
  try {
    final = await readEvents(response, (delta) => text.append(document.createTextNode(delta)));
  } catch (e) {
    showError(e.message);
  }
  if (file.current !== blob) return;                  // another file was dropped meanwhile
  const work = (performance.now() - started) / 1000;
  const length = await seconds;
  const parts = [name];
  if (Number.isFinite(length)) parts.push(`${length.toFixed(1)} s of audio`);
  parts.push(`${work.toFixed(1)} s to transcribe`);
  if (Number.isFinite(length) && work > 0) parts.push(`${(length / work).toFixed(2)}x real time`);
  if (final === null) parts.push("incomplete");
  $("file-info").textContent = parts.join(" · ");
  if (final !== null) {
    text.textContent = final;
    setDownloads(true);
  }
}

// Reads `data: {json}` events; calls onDelta per delta; returns the done event's text.
async function readEvents(response, onDelta) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      const event = JSON.parse(data);
      if (event.error) throw new Error(`the server: ${event.error.message}`);
      if (event.type === "transcript.text.delta") onDelta(event.delta);
      else if (event.type === "transcript.text.done") return event.text;
    }
    if (done) throw new Error("the server ended the stream before the transcript was done");
  }
}

async function download(format) {
  const blob = file.current;
  if (!blob) return;
  const [responseFormat, extension, type] = FORMATS[format];
  const button = $("downloads").querySelector(`[data-format="${format}"]`);
  if (file.results[format] === undefined) {
    button.disabled = true;
    const extra = format === "json" ? { "timestamp_granularities[]": "segment" } : {};
    try {
      const response = await fetch("/v1/audio/transcriptions", {
        method: "POST", headers: authHeaders(), body: transcriptionForm(blob, { response_format: responseFormat, ...extra }),
      });
      if (!response.ok) return showError(await errorMessage(response));
      const body = await response.text();
      if (file.current !== blob) return;
      file.results[format] = body;
    } catch (e) {
      return showError(await diagnose(`the download failed: ${e.message}`));
    } finally {
      button.disabled = false;
    }
  }
  const stem = (blob.name || "audio").replace(/\.[^.]*$/, "");
  saveBlob(new Blob([file.results[format]], { type }), `${stem}.${extension}`);
}

// -- wiring -----------------------------------------------------------------

function setupFile() {
  const input = $("file-input");
  const drop = $("drop");
  input.addEventListener("change", () => { if (input.files[0]) transcribeFile(input.files[0]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) transcribeFile(e.dataTransfer.files[0]);
  });
  for (const b of $("downloads").querySelectorAll("button")) b.addEventListener("click", () => download(b.dataset.format));
}

function setupLive() {
  setMic("idle");
  $("mic").addEventListener("click", () => (live ? stopLive() : startLive()));
  $("live-copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("live-text").textContent); } catch (e) { showError("copying needs clipboard permission"); }
  });
}

setupSettings();
setupLive();
setupFile();
checkHealth();
