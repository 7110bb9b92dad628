// The livelm chat page: plain JavaScript, no build step, no dependencies.
// It talks to the same server's OpenAI-compatible API: streaming chat completions
// (Server-Sent Events read with fetch + TextDecoder) and POST /v1/feedback.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = {
  log: $("#log"), empty: $("#empty"), input: $("#input"), form: $("#composer"), send: $("#send"), stop: $("#stop"),
  model: $("#model"), system: $("#system"), temperature: $("#temperature"), temperatureValue: $("#temperature-value"),
  key: $("#api-key"), settings: $("#settings"), settingsToggle: $("#settings-toggle"), notice: $("#notice"),
  newChat: $("#new-chat"), tools: $("#answer-tools"),
};

// turns: {role: "user"|"assistant", content, node, context?: messages the answer was generated from, model?}
// first: turns before it no longer fit the context window and are not sent
const state = { turns: [], first: 0, controller: null, speech: { stt: false, tts: false } };

// ---- voice: the microphone (/v1/audio/transcriptions) and answers read aloud (/v1/audio/speech) ------
// Recording uses MediaRecorder (WebM/Opus in Chromium and Firefox, MP4 in Safari; the server decodes
// them all). Speaking splits the streamed answer into sentences and asks for each one as soon as it is
// complete, so the first sentence plays while the model is still writing the rest.
el.mic = $("#mic");
el.speak = $("#speak-toggle");
el.voiceSend = $("#voice-send");
const SENTENCE_END = /[。！？!?]+["'”’」』）)\]]*|\n+|[.…]+["'”’)\]]*(?=\s)/g;

function voiceControls() {
  el.mic.hidden = !state.speech.stt;
  $("#voice-send-label").hidden = !state.speech.stt;
  el.speak.hidden = !state.speech.tts;
  for (const m of document.querySelectorAll(".correction .mic")) m.hidden = !state.speech.stt;
}

// Record until the button is clicked again (or 60 s), then transcribe; `done(text)` gets the words.
async function record(button, done) {
  if (button.recorder) { button.recorder.stop(); return; }
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); }
  catch (e) { notice("No microphone: " + e.message); return; }
  const recorder = new MediaRecorder(stream);
  const parts = [];
  recorder.ondataavailable = ev => ev.data.size && parts.push(ev.data);
  recorder.onstop = async () => {
    clearTimeout(button.limit);
    stream.getTracks().forEach(t => t.stop());
    button.recorder = null;
    button.classList.remove("recording");
    button.disabled = true;
    try {
      const form = new FormData();
      const type = recorder.mimeType || "audio/webm";
      form.append("file", new Blob(parts, { type }), "speech." + (type.includes("mp4") ? "mp4" : "webm"));
      form.append("model", "whisper-1");
      form.append("response_format", "json");
      const h = headers();
      delete h["Content-Type"];          // the browser sets the multipart boundary
      const resp = await fetch("/v1/audio/transcriptions", { method: "POST", headers: h, body: form });
      if (!resp.ok) throw new Error(await errorText(resp));
      const text = (await resp.json()).text.trim();
      if (!text) notice("Nothing was heard: try again, closer to the microphone.", false);
      else done(text);
    } catch (e) { notice("Transcription failed: " + e.message); }
    finally { button.disabled = false; }
  };
  recorder.start(250);
  button.recorder = recorder;
  button.classList.add("recording");
  button.limit = setTimeout(() => recorder.state !== "inactive" && recorder.stop(), 60_000);
}

el.mic.addEventListener("click", () => record(el.mic, text => {
  if (el.voiceSend.checked && !state.controller) {
    ask(text);
  } else {
    el.input.value = (el.input.value ? el.input.value + " " : "") + text;
    autosize();
    el.input.focus();
  }
}));
el.speak.addEventListener("click", () => {
  const on = el.speak.getAttribute("aria-pressed") !== "true";
  el.speak.setAttribute("aria-pressed", String(on));
  el.speak.textContent = on ? "🔊 speaking" : "🔈 speak";
  save("speak", on ? "1" : "");
  if (!on) stopSpeaking();
});

// sentences are fetched in order and played one after another
const speech = { queue: Promise.resolve(), audio: null, generation: 0 };
function speaking() { return el.speak.getAttribute("aria-pressed") === "true"; }
function stopSpeaking() {
  speech.generation += 1;
  if (speech.audio) speech.audio.pause();
  speech.queue = Promise.resolve();
}
function say(text) {
  if (!text.trim() || !speaking()) return;
  const generation = speech.generation;
  const fetched = fetch("/v1/audio/speech", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: "tts-1", input: text, voice: "alloy", response_format: "mp3" }),
  }).then(async r => { if (!r.ok) throw new Error(await errorText(r)); return r.blob(); });
  speech.queue = speech.queue.then(async () => {
    let blob;
    try { blob = await fetched; } catch (e) { notice("Speech failed: " + e.message); return; }
    if (generation !== speech.generation) return;
    const audio = new Audio(URL.createObjectURL(blob));
    speech.audio = audio;
    document.body.dataset.spoken = String(Number(document.body.dataset.spoken || 0) + 1);
    await new Promise(resolve => {
      audio.onended = audio.onerror = resolve;
      audio.play().catch(resolve);
    });
    URL.revokeObjectURL(audio.src);
  });
}
// the complete sentences of `text` after position `from`: [text to say, new position]
function nextSentences(text, from, final) {
  let end = from, m;
  SENTENCE_END.lastIndex = from;
  while ((m = SENTENCE_END.exec(text))) end = m.index + m[0].length;
  if (final) end = text.length;
  return [text.slice(from, end), end];
}

// ---- settings, remembered in this browser ----------------------------------------------------
const saved = (k, d) => localStorage.getItem("livelm." + k) ?? d;
const save = (k, v) => localStorage.setItem("livelm." + k, v);
el.system.value = saved("system", "");
el.temperature.value = saved("temperature", "0.7");
el.key.value = saved("key", "");
if (saved("speak", "")) { el.speak.setAttribute("aria-pressed", "true"); el.speak.textContent = "🔊 speaking"; }
el.temperatureValue.textContent = el.temperature.value;
el.system.addEventListener("input", () => save("system", el.system.value));
el.temperature.addEventListener("input", () => {
  el.temperatureValue.textContent = el.temperature.value;
  save("temperature", el.temperature.value);
});
el.key.addEventListener("change", () => { save("key", el.key.value.trim()); loadModels(); });
el.model.addEventListener("change", () => save("model", el.model.value));
el.settingsToggle.addEventListener("click", () => toggleSettings());
function toggleSettings(open = el.settings.hidden) {
  el.settings.hidden = !open;
  el.settingsToggle.setAttribute("aria-expanded", String(open));
}

function notice(text, error = true) {
  el.notice.textContent = text || "";
  el.notice.hidden = !text;
  el.notice.classList.toggle("info", !error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = el.key.value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch { return `${resp.status} ${resp.statusText}`; }
}

// ---- models ----------------------------------------------------------------------------------
async function loadModels() {
  let resp;
  try { resp = await fetch("/v1/models", { headers: headers() }); }
  catch (e) { notice("Cannot reach the server: " + e.message); return; }
  if (resp.status === 401) {
    notice("This server needs an API key: enter it in settings.");
    toggleSettings(true);
    el.key.focus();
    return;
  }
  if (!resp.ok) { notice(await errorText(resp)); return; }
  notice("");
  const all = (await resp.json()).data;
  const data = all.filter(m => !m.task || m.task === "chat");      // speech models have their own buttons
  state.speech = { stt: all.some(m => m.task === "transcription"), tts: all.some(m => m.task === "speech") };
  voiceControls();
  const want = saved("model", "");
  el.model.replaceChildren(...data.map(m => {
    const o = document.createElement("option");
    o.value = o.textContent = m.id;
    if (m.parent) o.textContent = `${m.id} (adapter)`;
    return o;
  }));
  if (data.some(m => m.id === want)) el.model.value = want;
}

// ---- conversation ----------------------------------------------------------------------------
function messages(turns) {
  const sys = el.system.value.trim();
  return [...(sys ? [{ role: "system", content: sys }] : []),
          ...turns.map(t => ({ role: t.role, content: t.content }))];
}

function addBubble(role, text) {
  el.empty.hidden = true;
  const node = document.createElement("div");
  node.className = "msg " + role;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  node.append(span);
  el.log.append(node);
  scrollDown();
  return node;
}

function scrollDown() { el.log.scrollTop = el.log.scrollHeight; }

function setBusy(busy) {
  el.send.hidden = busy;
  el.stop.hidden = !busy;
  for (const b of document.querySelectorAll(".regenerate")) b.disabled = busy;
}

async function ask(text) {
  const turn = { role: "user", content: text };
  turn.node = addBubble("user", text);
  state.turns.push(turn);
  await answer();
}

async function answer() {
  const turn = { role: "assistant", content: "", model: el.model.value };
  turn.node = addBubble("assistant", "");
  turn.node.classList.add("streaming");
  state.turns.push(turn);
  const textNode = $(".text", turn.node);
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let finish = null, error = null, spoken = 0;
  stopSpeaking();
  try {
    let resp;
    for (;;) {
      turn.context = messages(state.turns.slice(state.first, -1));
      resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model: turn.model || undefined, messages: turn.context, stream: true,
                               temperature: Number(el.temperature.value) }),
      });
      if (resp.ok) break;
      const body = await resp.json().catch(() => ({}));
      const err = body.error || { message: `${resp.status} ${resp.statusText}` };
      // The server never truncates; the page does it openly: drop the oldest exchange and say so.
      if (err.code === "context_length_exceeded" && state.turns.length - 1 - state.first > 1) {
        state.first += 2;
        for (const t of state.turns.slice(0, state.first)) t.node.classList.add("forgotten");
        notice("The conversation outgrew the model's context window: the oldest exchange is no longer sent.", false);
        continue;
      }
      throw new Error(err.message);
    }
    // SSE: events are separated by a blank line; TextDecoder(stream) copes with UTF-8 split across reads
    const reader = resp.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { error = chunk.error.message; continue; }
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.delta && choice.delta.content) {
            turn.content += choice.delta.content;
            textNode.textContent = turn.content;
            scrollDown();
            let sentence;
            [sentence, spoken] = nextSentences(turn.content, spoken, false);
            say(sentence);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else error = e.message;
  } finally {
    state.controller = null;
    turn.node.classList.remove("streaming");
    setBusy(false);
  }
  if (finish !== "stopped") say(nextSentences(turn.content, spoken, true)[0]);
  if (error) {
    const p = document.createElement("div");
    p.className = "error";
    p.textContent = "⚠ " + error;
    turn.node.append(p);
  }
  if (finish === "stopped" || finish === "length") {
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = finish === "stopped" ? "stopped" : "cut off at the length limit";
    turn.node.append(meta);
  }
  const at = state.turns.indexOf(turn);
  if (at < 0) return;              // the conversation was cleared meanwhile
  if (!turn.content && error) {   // nothing to keep: drop it from the conversation, keep the message on screen
    state.turns.splice(at, 1);
  } else {
    addTools(turn);
  }
  el.input.focus();
}

// ---- feedback --------------------------------------------------------------------------------
async function sendFeedback(turn, kind, extra, status) {
  status.className = "status";
  status.textContent = "saving…";
  try {
    const resp = await fetch("/v1/feedback", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ kind, conversation: turn.context, answer: turn.content, model: turn.model, ...extra }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    status.textContent = kind === "correction" ? "✓ correction saved — thank you" : "✓ thanks";
    return true;
  } catch (e) {
    status.className = "status bad";
    status.textContent = "⚠ " + e.message;
    return false;
  }
}

function addTools(turn) {
  const frag = el.tools.content.cloneNode(true);
  turn.node.append(frag);
  const tools = $(".tools", turn.node), form = $(".correction", turn.node), status = $(".status", tools);
  const area = $("textarea", form);
  const up = $(".up", tools), down = $(".down", tools);
  const openCorrection = () => {
    form.hidden = false;
    if (!area.value) area.value = turn.content;
    area.focus();
    area.select();
  };
  up.addEventListener("click", async () => {
    if (await sendFeedback(turn, "up", {}, status)) { up.classList.add("chosen"); down.classList.remove("chosen"); }
  });
  down.addEventListener("click", async () => {
    if (await sendFeedback(turn, "down", {}, status)) { down.classList.add("chosen"); up.classList.remove("chosen"); }
    openCorrection();
  });
  $(".correct", tools).addEventListener("click", openCorrection);
  // a spoken correction is a correction: the words go into the box, to check before submitting
  const mic = $(".mic", form);
  mic.hidden = !state.speech.stt;
  mic.addEventListener("click", () => record(mic, text => { area.value = text; area.focus(); }));
  $(".cancel", form).addEventListener("click", () => { form.hidden = true; });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const text = area.value.trim();
    if (!text) { area.focus(); return; }
    if (await sendFeedback(turn, "correction", { correction: text }, status)) form.hidden = true;
  });
  $(".regenerate", tools).addEventListener("click", () => regenerate(turn));
}

async function regenerate(turn) {
  if (state.controller) return;
  const i = state.turns.indexOf(turn);
  // answering again replaces this answer and everything after it
  for (const t of state.turns.splice(i)) t.node.remove();
  state.first = Math.min(state.first, Math.max(0, i - 1));
  await answer();
}

// ---- composer --------------------------------------------------------------------------------
el.form.addEventListener("submit", ev => {
  ev.preventDefault();
  const text = el.input.value.trim();
  if (!text || state.controller) return;
  el.input.value = "";
  autosize();
  ask(text);
});
el.input.addEventListener("keydown", ev => {
  // Enter sends, but not while an input method is composing (Chinese, Japanese...): that Enter picks a candidate
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    el.form.requestSubmit();
  }
});
function autosize() {
  el.input.style.height = "auto";
  el.input.style.height = Math.min(el.input.scrollHeight + 2, 192) + "px";
}
el.input.addEventListener("input", autosize);
el.stop.addEventListener("click", () => { stopSpeaking(); if (state.controller) state.controller.abort(); });
el.newChat.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  for (const t of state.turns) t.node.remove();
  state.turns = [];
  state.first = 0;
  notice("");
  el.empty.hidden = false;
  el.input.focus();
});

loadModels();
el.input.focus();
