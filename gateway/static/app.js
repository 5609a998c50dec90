/*
 * s2s browser page: push-to-talk recording, upload, SSE reply stream,
 * ordered audio playback, visualizer and stage badges.
 *
 * Rules this file keeps (the server sends a strict CSP):
 *   - no inline scripts, handlers or style attributes; no network beyond same origin;
 *   - everything that comes from the server is inserted with textContent, never as HTML.
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------------------
  // Constants
  // ---------------------------------------------------------------------------

  // Used only if /api/config cannot be reached, so the page still shows something sensible.
  const FALLBACK_PERSONAS = [
    { key: "wildlife_expert", name: "Dr. Maya Chen", voice: "af_heart", style: "Calm, scientific authority" },
    { key: "friendly_teacher", name: "Professor Sam", voice: "am_michael", style: "Warm analogies" },
    { key: "casual_chat", name: "Alex", voice: "af_bella", style: "Natural conversation" },
    { key: "astronaut", name: "Captain Alex", voice: "am_adam", style: "Urgent, terse" },
  ];
  const FALLBACK_DEFAULT_PERSONA = "wildlife_expert";

  // Preferred recording formats, best first; the gateway decodes with ffmpeg.
  const RECORDING_TYPES = [
    "audio/webm;codecs=opus",
    "audio/webm",
    "audio/ogg;codecs=opus",
    "audio/mp4",
  ];

  const MIN_RECORDING_MS = 300;      // shorter presses are almost always accidental
  const MAX_RECORDING_MS = 60000;    // stop a stuck press before the upload grows unbounded
  const STAGES_POLL_MS = 2000;
  const STAGES_TIMEOUT_MS = 1800;    // shorter than the poll period so polls never pile up
  const FFT_SIZE = 256;              // 128 frequency bins
  const USED_BIN_FRACTION = 0.6;     // voice lives in the bottom ~60% of the bins
  const STAGE_ORDER = ["asr", "llm", "tts"];
  const DEBUG_LOG_SIZE = 1000;

  const GATEWAY_DOWN = "Cannot reach the gateway. Is it running? Retrying every few seconds…";

  const STATUS_TEXT = {
    idle: "Ready. Hold the button or the Space bar to talk.",
    listening: "Listening… release to send.",
    thinking: "Thinking…",
    speaking: "Speaking…",
  };

  // Latency shown under each answer: three from the server's `done` timing, and the wait the
  // page measures itself, from letting go of the button to the first chunk playing.
  const LATENCY = [
    { key: "asr", label: "ASR" },
    { key: "llm_first_sentence", label: "LLM first sentence" },
    { key: "tts_first_chunk", label: "TTS first chunk" },
    { key: "first_audio", label: "First audio" },
  ];

  // ---------------------------------------------------------------------------
  // Page state
  // ---------------------------------------------------------------------------

  const el = {};              // DOM elements by id, filled in init()

  const app = {
    uiState: "idle",
    personas: [],
    configFromServer: false,
    rec: null,                // the current recording (see startPress)
    turn: null,               // the latest turn (see newTurn)
    turnSeq: 0,
    gatewayDown: false,
    errorKind: null,          // "gateway" errors clear themselves when the gateway is back
    userPickedPersona: false,
  };

  const audio = {
    ctx: null,                // one AudioContext for the page, unlocked by a user gesture
    playAnalyser: null,       // reply audio goes through this to the speakers
  };

  // The reply audio queue. Chunks are decoded as they arrive and played strictly
  // in index order, one at a time; `gen` invalidates work from a stopped turn.
  const player = {
    gen: 0,
    pending: new Map(),       // index -> Promise<AudioBuffer|null>
    nextIndex: 0,
    current: null,            // { source, entry } while a chunk is playing
    decoding: false,          // true while pump() awaits a decode
    streamEnded: false,       // no more chunks will arrive for this turn
    sessionId: null,
  };

  const viz = { ctx2d: null, raf: 0, data: null, color: null };

  // Debug/test hook, the only global: what the page did and when (performance.now() ms).
  //   chunks: one entry per `chunk` event received, live or not: {sessionId, index, bytes, live,
  //           arrivedAt, duration, startedAt, endedAt, stopped}; the player fills in the rest.
  //   marks:  {name, at, sessionId}: press, release, upload, transcript, done, error, stop.
  //   outputLevel(): the reply audio's peak level right now (0 when silent).
  // Both logs keep their last DEBUG_LOG_SIZE entries.
  const debug = {
    chunks: [],
    marks: [],
    get state() { return app.uiState; },
    get sessionId() { return app.turn ? app.turn.sessionId : null; },
    outputLevel: function () { return outputLevel(); },
  };
  window.s2s = debug;

  function logTo(list, entry) {
    list.push(entry);
    if (list.length > DEBUG_LOG_SIZE) list.splice(0, list.length - DEBUG_LOG_SIZE);
  }

  function mark(name, sessionId) {
    logTo(debug.marks, { name: name, at: now(), sessionId: sessionId || null });
  }

  // ---------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------

  function now() {
    return performance.now();
  }

  function makeEl(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // fetch with same-origin cookies (the conversation cookie) and an optional timeout.
  function apiFetch(url, options, timeoutMs) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    if (!timeoutMs || typeof AbortController === "undefined") return fetch(url, opts);
    const ctl = new AbortController();
    const timer = setTimeout(function () { ctl.abort(); }, timeoutMs);
    opts.signal = ctl.signal;
    return fetch(url, opts).finally(function () { clearTimeout(timer); });
  }

  // Error bodies are {"error": "..."}; tolerate anything else.
  async function readJson(res) {
    try {
      return await res.json();
    } catch (_) {
      return null;
    }
  }

  function errorFromBody(body, res, fallback) {
    if (body && typeof body.error === "string" && body.error) return body.error;
    return fallback + " (HTTP " + res.status + ").";
  }

  function parseEventData(ev) {
    try {
      return JSON.parse(ev.data);
    } catch (_) {
      console.warn("s2s: ignoring malformed event", ev.type, ev.data);
      return null;
    }
  }

  function isFormControl(target) {
    if (!target || !target.tagName) return false;
    if (target.isContentEditable) return true;
    const tag = target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return true;
    // Space must still activate the other buttons; on #record it is push-to-talk.
    return tag === "BUTTON" && target !== el.record;
  }

  // ---------------------------------------------------------------------------
  // UI state and status line
  // ---------------------------------------------------------------------------

  function setState(state, message) {
    app.uiState = state;
    if (state !== "error") app.errorKind = null;
    document.body.dataset.state = state;
    el.status.textContent = message || STATUS_TEXT[state] || "";
    el.record.setAttribute("aria-pressed", state === "listening" ? "true" : "false");
    viz.color = null;           // colour depends on state; re-read from CSS
    refreshControls();
  }

  // kind "gateway": the gateway could not be reached; the stage poll clears it when it answers.
  function showError(message, kind) {
    mark("error", app.turn ? app.turn.sessionId : null);
    setState("error", message);
    app.errorKind = kind || null;
    if (kind === "gateway") app.gatewayDown = true;
  }

  // Stop is useful whenever something is recording, waiting or playing.
  function refreshControls() {
    const turnOpen = app.turn && !app.turn.ended;
    el.stop.disabled = !(app.rec || turnOpen || playerBusy());
  }

  // After the reply finished playing, return to idle unless an error is being shown.
  function settleIfDone() {
    const turn = app.turn;
    if (app.rec || playerBusy()) return refreshControls();
    if (turn && !turn.ended) return refreshControls();
    if (app.uiState === "thinking" || app.uiState === "speaking") setState("idle");
    else refreshControls();
  }

  // ---------------------------------------------------------------------------
  // Conversation list
  // ---------------------------------------------------------------------------

  function isScrolledToBottom() {
    const c = el.conversationScroller;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 40;
  }

  // Keep the newest turn in view, but do not yank the user back if they scrolled up.
  function withAutoScroll(fn) {
    const stick = isScrolledToBottom();
    fn();
    el.emptyHint.hidden = el.conversation.children.length > 0;
    if (stick) el.conversationScroller.scrollTop = el.conversationScroller.scrollHeight;
  }

  function addTurnElements(personaName, voice) {
    const li = makeEl("li", "turn");
    const user = makeEl("div", "msg msg--user");
    user.appendChild(makeEl("span", "msg__who", "You"));
    const userText = makeEl("p", "msg__text msg__text--pending", "…");
    user.appendChild(userText);

    const reply = makeEl("div", "msg msg--assistant");
    const who = makeEl("span", "msg__who", personaName);
    const voiceLabel = makeEl("span", "msg__voice", voice ? " · voice " + voice : "");
    who.appendChild(voiceLabel);
    reply.appendChild(who);
    const replyText = makeEl("p", "msg__text msg__text--pending", "…");
    reply.appendChild(replyText);
    const timing = makeEl("dl", "latency");
    timing.setAttribute("aria-label", "Latency of this answer");
    timing.hidden = true;
    reply.appendChild(timing);
    const note = makeEl("p", "msg__note");
    note.hidden = true;
    reply.appendChild(note);

    li.appendChild(user);
    li.appendChild(reply);
    withAutoScroll(function () { el.conversation.appendChild(li); });
    return { li: li, userText: userText, replyText: replyText, timing: timing, note: note, voice: voiceLabel };
  }

  function setText(node, text) {
    withAutoScroll(function () {
      node.textContent = text;
      node.classList.remove("msg__text--pending");
    });
  }

  function setNote(turn, text, isError) {
    withAutoScroll(function () {
      turn.view.note.textContent = text;
      turn.view.note.hidden = false;
      turn.view.note.classList.toggle("msg__note--error", !!isError);
    });
  }

  // Placeholders that never got real text should not stay as "…".
  function finalizePlaceholders(turn) {
    const v = turn.view;
    if (v.userText.classList.contains("msg__text--pending")) setText(v.userText, "(no transcript)");
    if (v.replyText.classList.contains("msg__text--pending")) setText(v.replyText, "(no reply)");
  }

  function clearConversation() {
    withAutoScroll(function () { el.conversation.textContent = ""; });
  }

  function isSeconds(value) {
    return typeof value === "number" && isFinite(value) && value >= 0;
  }

  // Every number of the server's timing, for the tooltip ("llm 0.12 s, total 1.90 s, ...").
  function formatTiming(timing) {
    return Object.keys(timing)
      .filter(function (k) { return isSeconds(timing[k]); })
      .map(function (k) { return k.replace(/_/g, " ") + " " + timing[k].toFixed(2) + " s"; })
      .join(", ");
  }

  // ---------------------------------------------------------------------------
  // Personas
  // ---------------------------------------------------------------------------

  function personaByKey(key) {
    return app.personas.find(function (p) { return p.key === key; }) || null;
  }

  function currentPersona() {
    return personaByKey(el.persona.value) || app.personas[0] || null;
  }

  function renderPersonas(personas, selectedKey) {
    app.personas = personas;
    el.persona.textContent = "";
    personas.forEach(function (p) {
      const opt = makeEl("option", null, p.name || p.key);
      opt.value = p.key;
      el.persona.appendChild(opt);
    });
    el.persona.value = personaByKey(selectedKey) ? selectedKey : (personas[0] ? personas[0].key : "");
    renderPersonaInfo();
  }

  function renderPersonaInfo() {
    const p = currentPersona();
    const parts = [];
    if (p && p.style) parts.push(p.style);
    if (p && p.voice) parts.push("voice " + p.voice);
    el.personaInfo.textContent = parts.join(" · ");
  }

  function validPersonas(list) {
    if (!Array.isArray(list)) return [];
    return list.filter(function (p) { return p && typeof p.key === "string" && p.key; });
  }

  async function loadConfig() {
    try {
      const res = await apiFetch("/api/config", {}, 5000);
      const body = await readJson(res);
      const personas = validPersonas(body && body.personas);
      if (!res.ok || !personas.length) throw new Error("bad config");
      // Keep a choice the user made from the fallback list, if the server knows it.
      const keep = app.userPickedPersona ? el.persona.value : null;
      app.configFromServer = true;
      renderPersonas(personas, personaByKeyIn(personas, keep) ? keep : body.default_persona);
      return true;
    } catch (_) {
      if (!app.personas.length) renderPersonas(FALLBACK_PERSONAS, FALLBACK_DEFAULT_PERSONA);
      return false;
    }
  }

  function personaByKeyIn(list, key) {
    return key ? list.some(function (p) { return p.key === key; }) : false;
  }

  // Persona change resets the conversation, here and on the server.
  async function onPersonaChange() {
    app.userPickedPersona = true;
    renderPersonaInfo();
    stopEverything({ quiet: true });
    clearConversation();
    const p = currentPersona();
    await postClear(p ? "Now talking to " + (p.name || p.key) + "." : undefined);
  }

  async function postClear(doneMessage) {
    try {
      const res = await apiFetch("/api/clear", { method: "POST" }, 5000);
      if (!res.ok) {
        const body = await readJson(res);
        showError(errorFromBody(body, res, "Could not clear the history"));
        return;
      }
      if (!app.rec && !app.turn) setState("idle", doneMessage);
    } catch (_) {
      showError("Cannot reach the gateway to clear the history. Is it running?", "gateway");
    }
  }

  async function onClear() {
    stopEverything({ quiet: true });
    clearConversation();
    await postClear("History cleared.");
  }

  // ---------------------------------------------------------------------------
  // Audio context (shared by the mic visualizer and the reply player)
  // ---------------------------------------------------------------------------

  // Must run inside a user gesture the first time, or browsers keep it suspended.
  function ensureAudio() {
    if (!audio.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      audio.ctx = new Ctx();
      audio.playAnalyser = makeAnalyser(audio.ctx);
      audio.playAnalyser.connect(audio.ctx.destination);
    }
    if (audio.ctx.state === "suspended") audio.ctx.resume().catch(function () {});
    return audio.ctx;
  }

  function makeAnalyser(ctx) {
    const a = ctx.createAnalyser();
    a.fftSize = FFT_SIZE;
    return a;
  }

  // Peak of the last few milliseconds of reply audio on its way to the speakers.
  function outputLevel() {
    const a = audio.playAnalyser;
    if (!a) return 0;
    const samples = new Float32Array(a.fftSize);
    a.getFloatTimeDomainData(samples);
    let peak = 0;
    for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
    return peak;
  }

  function base64ToArrayBuffer(b64) {
    // atob rather than fetch(data:) because the CSP's connect-src does not allow data:.
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes.buffer;
  }

  // Resolve to null on failure so one bad chunk is skipped instead of stalling the queue.
  function decodeChunk(b64) {
    const ctx = ensureAudio();
    if (!ctx) return Promise.resolve(null);
    let data;
    try {
      data = base64ToArrayBuffer(b64);
    } catch (err) {
      console.warn("s2s: chunk is not valid base64", err);
      return Promise.resolve(null);
    }
    return new Promise(function (resolve) {
      // Callback form too, for older Safari without the promise form.
      const p = ctx.decodeAudioData(data, resolve, function (err) {
        console.warn("s2s: could not decode chunk", err);
        resolve(null);
      });
      if (p && p.catch) p.catch(function () { resolve(null); });
    });
  }

  // ---------------------------------------------------------------------------
  // Reply audio queue
  // ---------------------------------------------------------------------------

  function playerBusy() {
    return !!(player.current || player.decoding || player.pending.size);
  }

  function playerReset(sessionId) {
    player.gen++;
    if (player.current) {
      const cur = player.current;
      player.current = null;
      cur.entry.endedAt = now();
      cur.entry.stopped = true;
      cur.source.onended = null;
      try { cur.source.stop(); } catch (_) { /* already stopped */ }
    }
    player.pending.clear();
    player.nextIndex = 0;
    player.decoding = false;
    player.streamEnded = false;
    player.sessionId = sessionId || null;
  }

  // `entry` is the chunk's record in debug.chunks; playing fills in its times.
  function playerEnqueue(entry, b64) {
    const index = entry.index;
    if (!Number.isInteger(index) || index < player.nextIndex || player.pending.has(index)) return;
    player.pending.set(index, { entry: entry, buffer: decodeChunk(b64) });
    pump();
  }

  // No more chunks are coming: lets pump() skip a missing index instead of waiting forever.
  function playerEndStream() {
    player.streamEnded = true;
    pump();
  }

  function pickNextIndex() {
    if (player.pending.has(player.nextIndex)) return player.nextIndex;
    if (!player.streamEnded || !player.pending.size) return null;
    return Math.min.apply(null, Array.from(player.pending.keys()));
  }

  async function pump() {
    if (player.current || player.decoding) return;
    const index = pickNextIndex();
    if (index === null) {
      settleIfDone();
      return;
    }
    const item = player.pending.get(index);
    player.pending.delete(index);
    player.decoding = true;
    const gen = player.gen;
    const buffer = await item.buffer;
    if (gen !== player.gen) return;          // stopped while decoding
    player.decoding = false;
    player.nextIndex = index + 1;
    if (buffer) startSource(item.entry, buffer);
    else pump();
  }

  function startSource(entry, buffer) {
    const ctx = ensureAudio();
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(audio.playAnalyser);
    entry.duration = buffer.duration * 1000;
    entry.startedAt = now();
    player.current = { source: source, entry: entry };
    source.onended = function () { onSourceEnded(source); };
    source.start();
    onPlaybackStarted(entry);
  }

  function onSourceEnded(source) {
    if (!player.current || player.current.source !== source) return;
    player.current.entry.endedAt = now();
    player.current = null;
    pump();
  }

  function onPlaybackStarted(entry) {
    const turn = app.turn;
    if (turn && turn.sessionId === entry.sessionId && turn.firstAudioAt === null) {
      turn.firstAudioAt = entry.startedAt;
      renderTiming(turn);
    }
    if (app.uiState === "thinking" || app.uiState === "speaking") setState("speaking");
    else refreshControls();
    vizStart();
  }

  // ---------------------------------------------------------------------------
  // Recording (push-to-talk)
  // ---------------------------------------------------------------------------

  function pickRecordingType() {
    if (!window.MediaRecorder || !MediaRecorder.isTypeSupported) return "";
    return RECORDING_TYPES.find(function (t) { return MediaRecorder.isTypeSupported(t); }) || "";
  }

  function micErrorMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return "Microphone access was denied. Allow the microphone for this page in the browser's site settings, then try again.";
    }
    if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
      return "No microphone was found. Plug one in and try again.";
    }
    if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
      return "The microphone could not be opened; another application may be using it.";
    }
    return "Could not start the microphone" + (err && err.message ? ": " + err.message : ".");
  }

  function recordingUnsupportedMessage() {
    if (!window.isSecureContext) {
      return "The microphone needs a secure page: open it as http://localhost or over https.";
    }
    return "This browser cannot record audio (no getUserMedia or MediaRecorder).";
  }

  function canRecord() {
    return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
  }

  // A press comes from the pointer, the Space key, or a keyboard/assistive "click" (toggle).
  function startPress(source) {
    if (app.rec) return;
    ensureAudio();                            // we are inside the user gesture here
    stopEverything({ quiet: true });          // talking over the reply interrupts it
    if (!canRecord()) {
      showError(recordingUnsupportedMessage());
      return;
    }
    const rec = {
      source: source, released: false, releasedAt: 0, discard: false,
      stream: null, recorder: null, chunks: [], startedAt: 0,
      micNode: null, micAnalyser: null, maxTimer: 0,
    };
    app.rec = rec;
    mark("press");
    setState("listening", "Opening the microphone…");
    openMic(rec);
  }

  function endPress(source) {
    const rec = app.rec;
    if (!rec || rec.released || (source && rec.source !== source)) return;
    rec.released = true;
    rec.releasedAt = now();                  // first audio is measured from here
    mark("release");
    if (rec.recorder && rec.recorder.state === "recording") {
      rec.recorder.stop();                   // onRecorderStopped sends the audio
      setState("thinking", "Sending your audio…");
    }
  }

  async function openMic(rec) {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      if (app.rec === rec) app.rec = null;
      showError(micErrorMessage(err));
      return;
    }
    rec.stream = stream;
    if (app.rec !== rec || rec.released || rec.discard) {
      // Released (or stopped) before the microphone was ready: nothing was recorded.
      releaseMic(rec);
      if (app.rec === rec) {
        app.rec = null;
        setState("idle", "Keep holding the button while you speak.");
      }
      return;
    }
    startRecorder(rec);
  }

  function startRecorder(rec) {
    const type = pickRecordingType();
    try {
      rec.recorder = type ? new MediaRecorder(rec.stream, { mimeType: type }) : new MediaRecorder(rec.stream);
    } catch (err) {
      releaseMic(rec);
      app.rec = null;
      showError("Could not start recording: " + (err && err.message ? err.message : err));
      return;
    }
    rec.recorder.ondataavailable = function (e) { if (e.data && e.data.size) rec.chunks.push(e.data); };
    rec.recorder.onstop = function () { onRecorderStopped(rec); };
    rec.recorder.start();
    rec.startedAt = now();
    rec.maxTimer = setTimeout(function () { endPress(null); }, MAX_RECORDING_MS);
    attachMicAnalyser(rec);
    setState("listening");
    vizStart();
  }

  // The mic feeds only the analyser, never the speakers (that would echo).
  function attachMicAnalyser(rec) {
    const ctx = ensureAudio();
    if (!ctx) return;
    try {
      rec.micNode = ctx.createMediaStreamSource(rec.stream);
      rec.micAnalyser = makeAnalyser(ctx);
      rec.micNode.connect(rec.micAnalyser);
    } catch (err) {
      console.warn("s2s: no mic visualizer", err);
    }
  }

  function releaseMic(rec) {
    clearTimeout(rec.maxTimer);
    if (rec.micNode) {
      try { rec.micNode.disconnect(); } catch (_) { /* already gone */ }
    }
    rec.micNode = null;
    rec.micAnalyser = null;
    if (rec.stream) rec.stream.getTracks().forEach(function (t) { t.stop(); });
    rec.stream = null;
  }

  // Abandon a recording without sending it (Stop, persona change, clear).
  function discardRecording() {
    const rec = app.rec;
    if (!rec) return;
    rec.discard = true;
    rec.released = true;
    app.rec = null;
    if (rec.recorder && rec.recorder.state === "recording") rec.recorder.stop();
    else releaseMic(rec);
  }

  function onRecorderStopped(rec) {
    const durationMs = now() - rec.startedAt;
    releaseMic(rec);
    if (app.rec === rec) app.rec = null;
    if (rec.discard) return;
    const type = (rec.recorder && rec.recorder.mimeType) || (rec.chunks[0] && rec.chunks[0].type) || "audio/webm";
    const blob = new Blob(rec.chunks, { type: type });
    if (durationMs < MIN_RECORDING_MS || blob.size < 100) {
      setState("idle", "That was too short. Hold the button while you speak.");
      return;
    }
    sendTurn(blob, rec.releasedAt || now());
  }

  // ---------------------------------------------------------------------------
  // A turn: upload, then the SSE reply stream
  // ---------------------------------------------------------------------------

  function newTurn(releasedAt) {
    const persona = currentPersona();
    const turn = {
      seq: ++app.turnSeq,
      persona: persona ? persona.key : "",
      sessionId: null,
      es: null,
      ended: false,             // the stream finished, failed or was stopped
      stopped: false,
      texts: [],                // chunk texts by index
      releasedAt: releasedAt,   // when the button (or Space) was let go
      firstAudioAt: null,       // when the first chunk started playing here
      timing: null,             // the server's timing from `done`
      gotEvent: false,
      view: addTurnElements(persona ? persona.name || persona.key : "Assistant", persona ? persona.voice : ""),
    };
    app.turn = turn;
    playerReset(null);
    return turn;
  }

  async function sendTurn(blob, releasedAt) {
    const turn = newTurn(releasedAt);
    mark("upload");
    setState("thinking", "Sending your audio…");
    let res;
    try {
      res = await apiFetch("/upload?persona=" + encodeURIComponent(turn.persona), {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        body: blob,
      });
    } catch (_) {
      failTurn(turn, "Cannot reach the gateway. Is it running?", "gateway");
      return;
    }
    const body = await readJson(res);
    const sessionId = body && typeof body.session_id === "string" ? body.session_id : null;
    if (turn !== app.turn || turn.ended) {
      // Stopped while uploading: tell the server not to bother.
      if (sessionId) postCancel(sessionId);
      return;
    }
    if (!res.ok || !sessionId) {
      failTurn(turn, res.ok ? "The gateway sent no session id." : errorFromBody(body, res, "Upload failed"));
      return;
    }
    turn.sessionId = sessionId;
    player.sessionId = sessionId;
    setState("thinking");
    openStream(turn);
  }

  function openStream(turn) {
    const es = new EventSource("/stream/" + encodeURIComponent(turn.sessionId));
    turn.es = es;
    // Each handler ignores events from a turn that is no longer the live one.
    function live(handler) {
      return function (ev) {
        if (turn !== app.turn || turn.ended) return;
        if (typeof ev.data === "string") turn.gotEvent = true;
        handler(turn, ev);
      };
    }
    es.addEventListener("transcript", live(onTranscript));
    es.addEventListener("chunk", function (ev) {
      // Logged before the liveness check: a chunk that reaches a stopped turn shows up too.
      const data = parseEventData(ev);
      const entry = {
        sessionId: turn.sessionId, index: data ? Number(data.index) : null,
        bytes: data && typeof data.b64 === "string" ? data.b64.length : 0,
        live: turn === app.turn && !turn.ended, arrivedAt: now(),
        duration: null, startedAt: null, endedAt: null, stopped: false,
      };
      logTo(debug.chunks, entry);
      if (!entry.live || !data) return;
      turn.gotEvent = true;
      onChunk(turn, data, entry);
    });
    es.addEventListener("done", live(onDone));
    // "error" is both the server's named event (has data) and EventSource's own
    // connection error (no data); one listener tells them apart.
    es.addEventListener("error", live(onStreamError));
  }

  function closeStream(turn) {
    if (turn.es) {
      turn.es.close();
      turn.es = null;
    }
  }

  function onTranscript(turn, ev) {
    const data = parseEventData(ev);
    mark("transcript", turn.sessionId);
    if (!data) return;
    const text = typeof data.text === "string" ? data.text.trim() : "";
    setText(turn.view.userText, text || "(nothing heard)");
  }

  function onChunk(turn, data, entry) {
    if (typeof data.b64 !== "string") return;
    const index = entry.index;
    if (typeof data.text === "string" && Number.isInteger(index) && index >= 0) {
      turn.texts[index] = data.text;
      setText(turn.view.replyText, turn.texts.filter(Boolean).join(" "));
    }
    playerEnqueue(entry, data.b64);
  }

  function onDone(turn, ev) {
    const data = parseEventData(ev) || {};
    mark("done", turn.sessionId);
    endStream(turn);
    if (typeof data.full_text === "string" && data.full_text.trim()) {
      setText(turn.view.replyText, data.full_text.trim());
    }
    finalizePlaceholders(turn);
    if (typeof data.voice === "string" && data.voice) {  // the voice the server actually spoke in
      setText(turn.view.voice, " · voice " + data.voice);
      turn.view.voice.dataset.spoken = data.voice;
    }
    turn.timing = data.timing && typeof data.timing === "object" ? data.timing : {};
    renderTiming(turn);
    playerEndStream();
  }

  // Shown once the answer is complete; first audio may be filled in when it starts playing.
  function renderTiming(turn) {
    if (!turn.timing) return;
    const values = Object.assign({}, turn.timing, { first_audio: null });
    if (turn.firstAudioAt !== null && turn.releasedAt) {
      values.first_audio = (turn.firstAudioAt - turn.releasedAt) / 1000;
    }
    const dl = turn.view.timing;
    withAutoScroll(function () {
      dl.textContent = "";
      LATENCY.forEach(function (item) {
        if (!isSeconds(values[item.key])) return;
        const row = makeEl("div", "latency__item");
        row.dataset.key = item.key;
        row.appendChild(makeEl("dt", "latency__label", item.label));
        row.appendChild(makeEl("dd", "latency__value", values[item.key].toFixed(2) + " s"));
        dl.appendChild(row);
      });
      dl.title = formatTiming(turn.timing);
      dl.hidden = !dl.children.length;
    });
  }

  function onStreamError(turn, ev) {
    const fromServer = typeof ev.data === "string";
    const data = fromServer ? parseEventData(ev) : null;
    endStream(turn);
    let message;
    let kind = null;
    if (fromServer) {
      message = data && typeof data.message === "string" && data.message ? data.message : "The assistant failed.";
      // Name the failing stage unless the message already does.
      const stage = data && typeof data.stage === "string" ? data.stage : "";
      if (stage && message.toLowerCase().indexOf(stage.toLowerCase()) < 0) message = stage.toUpperCase() + ": " + message;
    } else if (turn.gotEvent) {
      message = "Lost the connection to the gateway during the reply.";
      kind = "gateway";
    } else {
      message = "Could not open the reply stream from the gateway.";
      kind = "gateway";
    }
    finalizePlaceholders(turn);
    setNote(turn, message, true);
    showError(message, kind);
    playerEndStream();                       // whatever audio already arrived may still play
  }

  function endStream(turn) {
    turn.ended = true;
    closeStream(turn);
  }

  function failTurn(turn, message, kind) {
    endStream(turn);
    finalizePlaceholders(turn);
    setNote(turn, message, true);
    showError(message, kind);
    playerEndStream();
  }

  function postCancel(sessionId) {
    // keepalive so the cancel still goes out if the page is being closed.
    apiFetch("/api/cancel/" + encodeURIComponent(sessionId), { method: "POST", keepalive: true })
      .catch(function () { /* the closed stream also cancels the turn server-side */ });
  }

  // Stop button: silence now, drop queued audio, close the stream, cancel on the server.
  function stopEverything(opts) {
    const quiet = opts && opts.quiet;
    discardRecording();
    const turn = app.turn;
    const hadWork = !!turn && (!turn.ended || playerBusy());
    playerReset(null);
    if (turn) {
      const wasOpen = !turn.ended;
      turn.stopped = true;
      endStream(turn);
      // Also after `done`: the server may still hold the turn; a late cancel is harmless.
      if (turn.sessionId && hadWork) postCancel(turn.sessionId);
      if (wasOpen) {
        finalizePlaceholders(turn);
        setNote(turn, "Stopped.", false);
      }
      app.turn = null;
    }
    if (!quiet) setState("idle", hadWork ? "Stopped." : undefined);
    else refreshControls();
  }

  // ---------------------------------------------------------------------------
  // Input wiring
  // ---------------------------------------------------------------------------

  function bindRecordButton() {
    const btn = el.record;
    btn.addEventListener("pointerdown", function (e) {
      if (e.pointerType === "mouse" && e.button !== 0) return;
      e.preventDefault();                    // no focus-steal, text selection or long-press menu
      try { btn.setPointerCapture(e.pointerId); } catch (_) { /* not supported */ }
      startPress("pointer");
    });
    ["pointerup", "pointercancel", "lostpointercapture"].forEach(function (type) {
      btn.addEventListener(type, function () { endPress("pointer"); });
    });
    // Safety net where pointer capture is unsupported and the finger leaves the button.
    document.addEventListener("pointerup", function () { endPress("pointer"); });
    btn.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    // Enter, screen readers and element.click() produce a click with detail 0: toggle.
    btn.addEventListener("click", function (e) {
      if (e.detail !== 0) return;
      if (app.rec && app.rec.source === "toggle") endPress("toggle");
      else if (!app.rec) startPress("toggle");
    });
  }

  function isSpace(e) {
    return e.code === "Space" || e.key === " " || e.key === "Spacebar";
  }

  function bindSpaceKey() {
    document.addEventListener("keydown", function (e) {
      if (!isSpace(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (isFormControl(e.target)) return;
      e.preventDefault();                    // no page scroll, no button click
      if (e.repeat) return;
      startPress("key");
    });
    document.addEventListener("keyup", function (e) {
      if (!isSpace(e) || !app.rec || app.rec.source !== "key") return;
      e.preventDefault();
      endPress("key");
    });
    // A key release that happens in another window never reaches us; send what we have.
    window.addEventListener("blur", function () { endPress("key"); });
  }

  function bindControls() {
    bindRecordButton();
    bindSpaceKey();
    el.stop.addEventListener("click", function () {
      mark("stop", app.turn ? app.turn.sessionId : null);
      stopEverything();
    });
    el.clear.addEventListener("click", onClear);
    el.persona.addEventListener("change", onPersonaChange);
  }

  // ---------------------------------------------------------------------------
  // Visualizer
  // ---------------------------------------------------------------------------

  function activeAnalyser() {
    if (app.rec && app.rec.micAnalyser) return app.rec.micAnalyser;
    if (player.current) return audio.playAnalyser;
    return null;
  }

  function vizStart() {
    if (!viz.raf) viz.raf = requestAnimationFrame(vizFrame);
  }

  function vizFrame() {
    viz.raf = 0;
    const analyser = activeAnalyser();
    drawVisualizer(analyser);
    // Keep animating only while there is something to show; idle costs nothing.
    if (analyser) viz.raf = requestAnimationFrame(vizFrame);
  }

  // Match the backing store to the displayed size so bars stay crisp on HiDPI screens.
  function fitCanvas() {
    const c = el.visualizer;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
  }

  function drawVisualizer(analyser) {
    const c = el.visualizer;
    const g = viz.ctx2d;
    if (!g) return;
    fitCanvas();
    const w = c.width;
    const h = c.height;
    const mid = h / 2;
    const dpr = window.devicePixelRatio || 1;
    if (!viz.color) viz.color = getComputedStyle(c).color;   // the bar colour comes from CSS
    g.clearRect(0, 0, w, h);
    g.fillStyle = viz.color;
    if (!analyser) {
      g.fillRect(0, mid - dpr / 2, w, dpr);                  // idle: a flat centre line
      return;
    }
    const bufLen = analyser.frequencyBinCount;               // fftSize 256 -> 128 bins
    if (!viz.data || viz.data.length !== bufLen) viz.data = new Uint8Array(bufLen);
    analyser.getByteFrequencyData(viz.data);
    const usedBins = Math.floor(bufLen * USED_BIN_FRACTION);
    const slot = w / usedBins;
    const barW = Math.max(1, slot * 0.7);
    for (let i = 0; i < usedBins; i++) {
      const half = Math.max(dpr / 2, (viz.data[i] / 255) * mid * 0.95);
      g.fillRect(i * slot + (slot - barW) / 2, mid - half, barW, half * 2);   // mirrored about the centre
    }
  }

  function initVisualizer() {
    viz.ctx2d = el.visualizer.getContext("2d");
    const redraw = function () { viz.color = null; if (!viz.raf) drawVisualizer(activeAnalyser()); };
    if (window.ResizeObserver) new ResizeObserver(redraw).observe(el.visualizer);
    else window.addEventListener("resize", redraw);
    if (window.matchMedia) {
      const mq = window.matchMedia("(prefers-color-scheme: dark)");
      if (mq.addEventListener) mq.addEventListener("change", redraw);
    }
    redraw();
  }

  // ---------------------------------------------------------------------------
  // Stage badges
  // ---------------------------------------------------------------------------

  function stageBadge(name, info) {
    const state = info && typeof info.state === "string" ? info.state : "unknown";
    const li = makeEl("li", "stage");
    li.dataset.stage = name;
    li.dataset.stageState = state;
    li.appendChild(makeEl("span", "stage__name", name.toUpperCase()));
    li.appendChild(makeEl("span", "stage__state", state));
    const model = info && (info.model || info.backend) ? String(info.model || info.backend) : "";
    li.dataset.model = model;
    if (model) li.appendChild(makeEl("span", "stage__model", modelLabel(model)));
    // Where the weights came from (local, hub-cache, hub, registry) and on which device.
    const where = [info && info.source, info && info.device].filter(Boolean).join(" · ");
    if (where) li.appendChild(makeEl("span", "stage__source", where));
    const details = ["backend", "model", "source", "device", "reason", "error"]
      .filter(function (k) { return info && info[k]; })
      .map(function (k) { return k + ": " + info[k]; });
    li.title = details.join("\n");
    li.setAttribute("aria-label", name.toUpperCase() + " " + state + (model ? ", " + model : "") +
      (where ? ", " + where : ""));
    return li;
  }

  // A local path is shown by its last part ("/models/qwen2/" -> "qwen2"); hub ids stay whole.
  function modelLabel(model) {
    if (!/^[\/~.]/.test(model)) return model;
    const parts = model.split(/[\/]+/).filter(Boolean);
    return parts.length ? parts[parts.length - 1] : model;
  }

  function renderStages(stages) {
    const names = STAGE_ORDER.filter(function (n) { return n in stages; });
    Object.keys(stages).forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
    // Skip the DOM work when nothing shown changed (this runs every 2 s, and the
    // payload also carries ever-changing counters such as last_seen_s_ago).
    const signature = JSON.stringify(names.map(function (n) {
      const i = stages[n] || {};
      return [n, i.state, i.backend, i.model, i.source, i.device, i.error];
    }));
    if (signature === el.stages.dataset.signature) return;
    el.stages.dataset.signature = signature;
    el.stages.textContent = "";
    names.forEach(function (n) { el.stages.appendChild(stageBadge(n, stages[n])); });
  }

  function renderGatewayUnreachable() {
    if (el.stages.dataset.signature === "unreachable") return;
    el.stages.dataset.signature = "unreachable";
    el.stages.textContent = "";
    const li = makeEl("li", "stage stage--unreachable", "gateway unreachable");
    li.dataset.stageState = "down";
    el.stages.appendChild(li);
  }

  async function pollStages() {
    let stages = null;
    try {
      const res = await apiFetch("/api/stages", { cache: "no-store" }, STAGES_TIMEOUT_MS);
      const body = await readJson(res);
      if (body && body.stages && typeof body.stages === "object") stages = body.stages;
    } catch (_) {
      stages = null;
    }
    try {
      if (stages) {
        renderStages(stages);
        showStageNotice(stages);
        await onGatewayReachable();
      } else {
        renderGatewayUnreachable();
        showStageNotice(null);
        onGatewayUnreachable();
      }
    } finally {
      setTimeout(pollStages, STAGES_POLL_MS);
    }
  }

  // Say so in the status line, unless a recording or a turn is under way: its own error says
  // what happened to it.
  function onGatewayUnreachable() {
    app.gatewayDown = true;
    if (app.rec || (app.turn && !app.turn.ended)) return;
    if (app.uiState === "error" && app.errorKind === "gateway") return;
    showError(GATEWAY_DOWN, "gateway");
  }

  // The gateway came back: fetch the real personas if we had to use the fallback list.
  async function onGatewayReachable() {
    const wasDown = app.gatewayDown;
    app.gatewayDown = false;
    if (!app.configFromServer && !(await loadConfig())) return;
    if (app.uiState === "error" && app.errorKind === "gateway" && !app.rec) {
      setState("idle", wasDown ? "The gateway is back. " + STATUS_TEXT.idle : undefined);
    }
  }

  // What a stage that is not ready means for the user, in words (null when it is fine);
  // transient: supervisor is bringing it back, so a turn waits for it.
  function stageProblem(name, info) {
    const state = info && typeof info.state === "string" ? info.state : "unknown";
    const label = name.toUpperCase();
    if (state === "ready" || state === "busy") return null;
    if (state === "loading") return { text: label + " is loading its model", transient: true };
    if (state === "draining") return { text: label + " is restarting", transient: true };
    if (state === "down") return { text: label + " is down; supervisor restarts it", transient: true };
    if (state === "stuck") return { text: label + " is not answering", transient: false };
    if (state === "failed") {
      return { text: label + " could not start" + (info.error ? ": " + info.error : ""), transient: false };
    }
    return { text: label + " is " + state, transient: false };
  }

  // A banner while any stage is not ready.
  function showStageNotice(stages) {
    const problems = !stages ? [] : Object.keys(stages)
      .map(function (n) { return stageProblem(n, stages[n]); })
      .filter(Boolean);
    let text = "";
    if (problems.length) {
      const subject = problems.length > 1 ? "they are" : "it is";
      const waits = problems.every(function (p) { return p.transient; });
      text = problems.map(function (p) { return p.text; }).join(". ") + ". " +
        (waits ? "Answers wait until " + subject + " back." : "Answers fail until " + subject + " fixed.");
    }
    if (text === el.notice.textContent) return;
    const recovered = !text && !el.notice.hidden;
    el.notice.textContent = text;
    el.notice.hidden = !text;
    const busy = app.rec || (app.turn && !app.turn.ended);
    if (recovered && stages && app.uiState === "idle" && !busy) {
      el.status.textContent = "Every stage is ready again. " + STATUS_TEXT.idle;
    }
  }

  // ---------------------------------------------------------------------------
  // Start-up
  // ---------------------------------------------------------------------------

  async function init() {
    ["record", "stop", "clear", "persona", "status", "notice", "conversation", "stages", "visualizer"]
      .forEach(function (id) { el[id] = document.getElementById(id); });
    el.personaInfo = document.getElementById("persona-info");
    el.emptyHint = document.getElementById("empty-hint");
    el.conversationScroller = el.conversation.parentElement;

    initVisualizer();
    bindControls();
    setState("idle", "Connecting to the gateway…");
    const ok = await loadConfig();
    if (ok) setState("idle");
    else showError("Gateway unreachable: could not load the personas. Retrying…", "gateway");
    if (!canRecord()) showError(recordingUnsupportedMessage());
    pollStages();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
