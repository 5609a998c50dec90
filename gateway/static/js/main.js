/*
 * s2s page: wires the parts together. Two modes, remembered in localStorage:
 *   hands-free (the default): the microphone streams over /v1/realtime, the server finds where
 *     each turn ends (semantic_vad), speaking over an answer interrupts it;
 *   push-to-talk: the microphone streams while the button (or Space) is held and is committed
 *     on release. Browsers without AudioWorklet upload the recording instead (upload.js).
 *
 * Modules: realtime.js (the socket and its turn phases), capture.js (+ capture-worklet.js: the
 * microphone as 24 kHz PCM16), player.js (gapless playback on the AudioContext clock),
 * stages.js (badges), view.js (the DOM), visualizer.js, upload.js, http.js.
 */
import { Capture, canStream, pcmMs } from "./capture.js";
import { apiFetch, errorFromBody, readJson } from "./http.js";
import { FADE_MS, Player, pcm16Buffer } from "./player.js";
import { RealtimeClient } from "./realtime.js";
import { pollStages, stageNotice } from "./stages.js";
import { Recording, canRecord, decodeWav, openReplyStream, postCancel, upload } from "./upload.js";
import * as view from "./view.js";
import { Visualizer } from "./visualizer.js";

const el = view.el;
const MODE_KEY = "s2s.mode";
const PERSONA_KEY = "s2s.persona";
const HANDS_FREE = "hands-free";
const PUSH_TO_TALK = "push-to-talk";
// The server finds the end of each turn; the page decides what interrupts an answer and what is
// answered (echo guard below), so the server does neither by itself.
const HANDS_FREE_DETECTION = { type: "semantic_vad", eagerness: "auto", create_response: false, interrupt_response: false };
// Echo guard: in the first HOLD_OFF_MS of an answer the browser's echo canceller is still
// adapting, so speech then must go on for CONFIRM_MS before it interrupts; later it interrupts at
// once. Speech the guard rejects is deleted from the conversation: never answered, never read.
const HOLD_OFF_MS = 2000;
const CONFIRM_MS = 600;
const QUIET_MS = 150;              // a pause within speech is shorter than this
const MIN_RECORDING_MS = 300;      // shorter presses are almost always accidental
const MAX_RECORDING_MS = 60000;    // a stuck press ends by itself
const DEBUG_LOG_SIZE = 1000;
const GATEWAY_DOWN = "Cannot reach the gateway. Is it running? Retrying every few seconds…";
const FALLBACK_PERSONAS = [
  { key: "wildlife_expert", name: "Dr. Maya Chen", voice: "af_heart", style: "Calm, scientific authority" },
  { key: "friendly_teacher", name: "Professor Sam", voice: "am_michael", style: "Warm analogies" },
  { key: "casual_chat", name: "Alex", voice: "af_bella", style: "Natural conversation" },
  { key: "astronaut", name: "Captain Alex", voice: "am_adam", style: "Urgent, terse" },
];
const FALLBACK_DEFAULT_PERSONA = "wildlife_expert";
const UPLOAD_LATENCY = [["asr", "ASR"], ["llm_first_sentence", "LLM first sentence"],
                        ["tts_first_chunk", "TTS first chunk"], ["first_audio", "First audio"]];

const app = {
  mode: localStorage.getItem(MODE_KEY) === PUSH_TO_TALK ? PUSH_TO_TALK : HANDS_FREE,
  streaming: canStream(),        // false: push-to-talk uploads (no AudioWorklet)
  ctx: null, output: null, player: null,
  client: null, clientReady: null,
  capture: null,                 // the open microphone (hands-free, or a press)
  listening: false,              // hands-free is on
  resumeListening: false,        // it went off with the gateway: back on when the gateway is
  press: null,                   // push-to-talk: the button is down
  turn: null,                    // the latest turn
  turns: {},                     // realtime: user item id -> turn
  bargeIn: null,                 // an interruption waiting for more speech (echo guard)
  rejected: new Set(),           // item ids of speech the echo guard rejected, to delete once committed
  asked: null,                   // the turn whose response.create awaits response.created
  nextAsk: null,                 // a turn to ask for once the response in progress is done
  turnSeq: 0,
  personas: [], configFromServer: false, userPickedPersona: false,
  error: null,                   // {message, kind} while an error shows
  flash: null,                   // {state, text}: a one-off status line for this state
  gatewayDown: false,
  renderTimer: 0,
};

// Debug/test hook, the only global: what the page did and when (performance.now() ms).
//   chunks: each audio chunk received: {sessionId, index, bytes, live, arrivedAt, duration,
//           startedAt, endedAt, gap, stopped} (player.js fills in the playback times);
//   marks:  {name, at, sessionId}: press, release, upload, speech_started, speech_stopped,
//           partial (a partial transcript shown), transcript, response (response.created),
//           done, error, stop, interrupted, ignored (a short sound in an answer's first
//           seconds), deleted (the server dropped an ignored item), truncated (the server cut
//           an answer to what was heard);
//   sent:   [at, type, fields] of each realtime command but audio;
//   appended: [at, ms] of each microphone frame sent (input_audio_buffer.append).
const debug = {
  chunks: [], marks: [], sent: [], appended: [],
  get state() { return document.body.dataset.state; },
  get mode() { return app.mode; },
  get sessionId() { return app.turn ? app.turn.key : null; },
  get phase() { return app.client ? app.client.phase : "closed"; },
  outputLevel() { return outputLevel(); },
  // the server's record of an item, as the next answer reads it
  retrieveItem(itemId) { return app.client ? app.client.retrieve(itemId) : Promise.resolve(null); },
};
window.s2s = debug;

function logTo(list, entry) {
  list.push(entry);
  if (list.length > DEBUG_LOG_SIZE) list.splice(0, list.length - DEBUG_LOG_SIZE);
}

function mark(name, key) {
  logTo(debug.marks, { name, at: performance.now(), sessionId: key || null });
}

// a microphone frame to the realtime socket (both modes stream the microphone this way)
function sendFrame(pcm) {
  if (app.client && app.client.append(pcm)) logTo(debug.appended, [performance.now(), pcmMs(pcm)]);
}

// --- audio ----------------------------------------------------------------------------------------

// Must first run inside a user gesture, or the browser keeps it suspended (see startListening).
function ensureAudio() {
  if (!app.ctx) {
    app.ctx = new (window.AudioContext || window.webkitAudioContext)();
    app.output = app.ctx.createAnalyser();
    app.output.fftSize = 256;
    app.output.connect(app.ctx.destination);
    app.player = new Player(app.ctx, app.output, onChunkStart);
  }
  if (app.ctx.state === "suspended") app.ctx.resume().catch(() => {});
  return app.ctx;
}

async function audioRunning() {
  const ctx = ensureAudio();
  if (ctx.state === "running") return true;
  await Promise.race([ctx.resume().catch(() => {}), new Promise((r) => setTimeout(r, 300))]);
  return ctx.state === "running";
}

// peak of the answer's audio on its way to the speakers right now (0 when silent)
function outputLevel() {
  if (!app.output) return 0;
  const samples = new Float32Array(app.output.fftSize);
  app.output.getFloatTimeDomainData(samples);
  let peak = 0;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  return peak;
}

function playing(turn) {
  return !!(app.player && turn && app.player.busy(turn.key));
}

// the turn whose answer is being given or played (speech may have started a newer turn meanwhile)
function answerTurn() {
  return Object.values(app.turns).concat(app.turn ? [app.turn] : [])
    .find((t) => !t.stopped && (t.answering || playing(t))) || null;
}

// --- what the page shows ------------------------------------------------------------------------------

function currentState() {
  if (app.error) return "error";
  const turn = app.turn;
  if (app.press) return "listening";
  if (app.player && app.player.busy()) return "speaking";
  if (app.client && app.client.phase === "hearing" && app.listening) return "hearing";
  if (turn && !turn.ended) return "thinking";
  // "listening" only once the microphone is live: words said before that would be lost
  if (app.listening) return app.capture && app.capture.live ? "listening" : "idle";
  return "idle";
}

const STATUS = {
  idle: () => app.listening ? "Opening the microphone…"
    : app.mode === HANDS_FREE ? "Ready. Press the button (or Space) to start listening."
                                       : "Ready. Hold the button or the Space bar to talk.",
  listening: () => app.press ? "Listening… release to send." : "Listening… just talk.",
  hearing: () => "Hearing you…",
  thinking: () => "Thinking…",
  speaking: () => app.mode === HANDS_FREE && app.listening ? "Speaking… talk to interrupt." : "Speaking…",
};

function render() {
  const state = currentState();
  let text;
  if (state === "error") text = app.error.message;
  else if (app.flash && app.flash.state === state) text = app.flash.text;
  else {
    app.flash = null;
    text = STATUS[state]();
  }
  const pressed = app.mode === HANDS_FREE ? app.listening : !!app.press;
  if (document.body.dataset.state !== state || el.status.textContent !== text) view.showState(state, text, pressed);
  el.record.setAttribute("aria-pressed", pressed ? "true" : "false");
  const turn = app.turn;
  el.stop.disabled = !(app.press || answerTurn() || (turn && !turn.ended));
  visualizer.wake();
  // come back when the answer's audio ends
  clearTimeout(app.renderTimer);
  if (state === "speaking") app.renderTimer = setTimeout(render, Math.max(20, app.player.endsAt() - performance.now() + 20));
}

function say(text) {
  app.flash = { state: currentState(), text };
  render();
}

function showError(message, kind) {
  mark("error", app.turn ? app.turn.key : null);
  app.error = { message, kind: kind || null };
  if (kind === "gateway") app.gatewayDown = true;
  render();
}

function clearError(message) {
  app.error = null;
  if (message) say(message);
  else render();
}

function renderMode() {
  const handsFree = app.mode === HANDS_FREE;
  el.modeHandsFree.checked = handsFree;
  el.modePushToTalk.checked = !handsFree;
  el.record.setAttribute("aria-label", handsFree ? (app.listening ? "Stop listening" : "Start listening") : "Hold to talk");
  el.recordHint.textContent = handsFree ? "Press to start or stop listening · Space works too"
                                        : "Hold to talk · Space works too";
  el.emptyHint.textContent = handsFree ? "Start listening, then just talk. Speak over an answer to interrupt it."
                                       : "Hold the microphone button (or the Space bar), speak, then let go.";
  document.body.dataset.mode = app.mode;
}

// --- turns ------------------------------------------------------------------------------------------

function personaByKey(key, list) {
  return (list || app.personas).find((p) => p.key === key) || null;
}

function currentPersona() {
  return personaByKey(el.persona.value) || app.personas[0] || null;
}

function newTurn(key, speechEndAt) {
  const persona = currentPersona();
  const turn = {
    seq: ++app.turnSeq, key, persona: persona ? persona.key : "",
    view: view.addTurn(persona ? persona.name || persona.key : "Assistant", persona ? persona.voice : ""),
    ended: false, stopped: false, interrupted: false,
    speechEndAt: speechEndAt || null, transcriptAt: null, firstAudioAt: null,
    responseId: null, answerItemId: null, answering: false, deliveredBytes: 0, truncateMs: null,
    chunks: 0, pendingText: "", shownText: "", timing: null, es: null, decoded: Promise.resolve(),
  };
  if (key) app.turns[key] = turn;
  app.turn = turn;
  return turn;
}

// The turn is over for the page (a cancelled answer may still be finishing on the server).
function endTurn(turn) {
  turn.ended = true;
  view.finalizePlaceholders(turn.view);
  render();
}

// An audio chunk of an answer arrived: logged, then scheduled right after the previous one.
function chunkEntry(turn, bytes) {
  const entry = { sessionId: turn.key, index: turn.chunks++, bytes, live: !turn.stopped && !turn.interrupted,
                  arrivedAt: performance.now(), duration: null, startedAt: null, endedAt: null, gap: null,
                  stopped: false, text: turn.pendingText };
  turn.pendingText = "";
  logTo(debug.chunks, entry);
  return entry;
}

function playChunk(turn, buffer, entry) {
  if (!entry.live || turn.stopped) return;
  app.player.play(turn.key, buffer, entry);
  if (turn.firstAudioAt === null) {
    turn.firstAudioAt = entry.startedAt;
    showLatency(turn);
  }
  render();
}

// realtime transcript deltas carry their own leading space, an upload's chunk texts do not
function joinWords(shown, more) {
  return (shown + " " + more).replace(/\s+/g, " ").trim();
}

// the answer's words appear as their audio starts
function onChunkStart(entry) {
  const turn = app.turns[entry.sessionId] || app.turn;
  if (!turn || turn.key !== entry.sessionId || !entry.text) return render();
  turn.shownText = joinWords(turn.shownText, entry.text);
  view.setText(turn.view.replyText, turn.shownText);
  render();
}

function showLatency(turn) {
  const since = turn.speechEndAt;
  const secs = (at) => (at !== null && since ? (at - since) / 1000 : null);
  if (turn.timing) {                         // an upload's turn: the server's timing too
    const values = Object.assign({}, turn.timing, { first_audio: secs(turn.firstAudioAt) });
    const title = Object.keys(turn.timing).filter((k) => typeof turn.timing[k] === "number")
      .map((k) => k.replace(/_/g, " ") + " " + turn.timing[k].toFixed(2) + " s").join(", ");
    view.showLatency(turn.view, UPLOAD_LATENCY.map(([key, label]) => ({ key, label, seconds: values[key] })), title);
  } else {
    view.showLatency(turn.view, [
      { key: "transcript", label: "Transcript", seconds: secs(turn.transcriptAt) },
      { key: "first_audio", label: "First audio", seconds: secs(turn.firstAudioAt) },
    ], "Measured from the end of your speech");
  }
}

/**
 * Silence the answer now (a fade of FADE_MS) and make the conversation keep only what was heard:
 * the response is cancelled if still running, and truncated to the milliseconds played.
 */
function cutAnswer(turn, note, kind) {
  const cut = app.player ? app.player.stop(FADE_MS) : null;
  const heardMs = cut && cut.key === turn.key ? cut.playedMs : (turn.firstAudioAt ? null : 0);
  if (turn.es) { turn.es.close(); turn.es = null; }
  if (turn.sessionId && !turn.ended) postCancel(turn.sessionId);
  // an answer cut before any of its audio arrived is dropped by the server: nothing to truncate
  if (app.client && turn.responseId && !turn.sessionId && turn.deliveredBytes) {
    const delivered = Math.floor(turn.deliveredBytes / 48);    // 24 kHz PCM16: 48 bytes a millisecond
    turn.truncateMs = heardMs === null ? delivered : Math.min(heardMs, delivered);
    if (!turn.answering) sendTruncate(turn);                   // else once it is done (below)
  }
  if (app.nextAsk === turn) { app.nextAsk = null; turn.answering = false; }
  if (app.client && turn.answering && turn.responseId === app.client.responseId) app.client.cancelResponse();
  view.setNote(turn.view, note, kind);
  turn.stopped = true;
  endTurn(turn);
}

// The turn is answered: now, or once the response in progress (one being cancelled) is done.
function askForAnswer(turn) {
  turn.answering = true;
  if (app.client.responseId || app.asked) {
    app.nextAsk = turn;
    return;
  }
  app.asked = turn;
  app.client.createResponse();
}

function askNext() {
  const turn = app.nextAsk;
  if (!turn || !app.client || app.client.responseId || app.asked) return;
  app.nextAsk = null;
  if (!turn.stopped) askForAnswer(turn);
}

function sendTruncate(turn) {
  if (turn.truncateMs === null || !turn.answerItemId) return;
  app.client.truncate(turn.answerItemId, turn.truncateMs);
  turn.truncateMs = null;
}

// Speech started while an answer is due or playing: interrupt it (true), unless it may be the
// answer's own echo (its first HOLD_OFF_MS): then only if the speech goes on for CONFIRM_MS, and
// the speech gets a turn of its own then (false now). Speech that stops sooner shows no turn.
// "Goes on" is judged on the microphone here: quiet at CONFIRM_MS, it has most likely stopped and
// the server's speech_stopped (after its silence wait) is still coming, so the page waits for it.
function onSpeechDuringAnswer(turn, itemId) {
  const since = turn.firstAudioAt === null ? 0 : performance.now() - turn.firstAudioAt;
  const interrupt = () => {
    mark("interrupted", turn.key);
    cutAnswer(turn, "Interrupted.", "interrupted");
  };
  if (turn.firstAudioAt === null || since >= HOLD_OFF_MS) {
    interrupt();
    return true;
  }
  const confirm = () => {
    if (app.capture && app.capture.quietFor(QUIET_MS)) {
      app.bargeIn.timer = setTimeout(confirm, QUIET_MS);
      return;
    }
    app.bargeIn = null;
    if (app.client && app.client.phase === "hearing" && !app.turns[itemId]) {
      interrupt();
      newTurn(itemId);
      render();
    }
  };
  app.bargeIn = { itemId, timer: setTimeout(confirm, CONFIRM_MS) };
  return false;
}

// --- the realtime socket ---------------------------------------------------------------------------

function sessionSettings() {
  const persona = currentPersona();
  return {
    persona: persona ? persona.key : undefined,
    audio: { input: { turn_detection: app.mode === HANDS_FREE ? HANDS_FREE_DETECTION : null } },
  };
}

function ensureClient() {
  if (app.client && app.clientReady) return app.clientReady;
  const client = new RealtimeClient(realtimeHandlers);
  client.sent = debug.sent;
  app.client = client;
  app.clientReady = client.open(sessionSettings()).then((session) => {
    app.voice = session && session.audio && session.audio.output ? session.audio.output.voice : null;
    return session;
  }, (err) => {
    if (app.client === client) { app.client = null; app.clientReady = null; }
    throw err;
  });
  return app.clientReady;
}

function closeClient() {
  if (!app.client) return;
  app.client.close();
  app.client = null;
  app.clientReady = null;
  app.turns = {};
  app.rejected.clear();
  app.asked = app.nextAsk = null;
}

function turnOfResponse(responseId) {
  return Object.values(app.turns).find((t) => t.responseId === responseId) || null;
}

// A response is over: what it said stays shown, its truncation (if cut) goes to the server.
function answerDone(turn, itemId, status, details) {
  turn.answering = false;
  turn.answerItemId = turn.answerItemId || itemId;
  if (status === "completed") mark("done", turn.key);
  if (turn.truncateMs !== null && status !== "failed") sendTruncate(turn);
  if (status === "failed") {
    const error = (details && details.error) || {};
    const stage = error.code && error.code !== "gateway" ? error.code.toUpperCase() + ": " : "";
    view.setNote(turn.view, stage + (error.message || "The assistant failed."), "error");
    showError(stage + (error.message || "The assistant failed."));
  }
  if (turn.pendingText && !turn.stopped) {                   // words with no audio of their own
    turn.shownText = joinWords(turn.shownText, turn.pendingText);
    turn.pendingText = "";
    view.setText(turn.view.replyText, turn.shownText);
  }
  if (turn.firstAudioAt !== null) showLatency(turn);
  if (app.voice && turn.firstAudioAt !== null) view.setSpokenVoice(turn.view, app.voice);  // the session's voice
  endTurn(turn);
}

const realtimeHandlers = {
  onPhase: () => render(),

  onSpeechStarted({ itemId }) {
    mark("speech_started", itemId);
    const answering = answerTurn();
    if (answering && !onSpeechDuringAnswer(answering, itemId)) return render();   // maybe its echo: wait
    newTurn(itemId);
    render();
  },

  onSpeechStopped({ itemId, audioEndMs }) {
    mark("speech_stopped", itemId);
    if (app.bargeIn && app.bargeIn.itemId === itemId) {      // short: an echo or a cough, not a barge-in
      clearTimeout(app.bargeIn.timer);
      app.bargeIn = null;
      mark("ignored", itemId);
      app.rejected.add(itemId);                              // deleted once committed (next)
    }
    const turn = app.turns[itemId];
    if (turn && app.capture) turn.speechEndAt = app.capture.speechEndBefore(audioEndMs);
  },

  onCommitted({ itemId }) {
    if (app.rejected.delete(itemId)) return app.client.deleteItem(itemId);
    const turn = app.turn;
    if (!app.turns[itemId] && turn && !turn.key) {          // push-to-talk: the press's turn
      turn.key = itemId;
      app.turns[itemId] = turn;
    }
    render();
  },

  onPartial({ itemId, text }) {
    const turn = app.turns[itemId];
    if (!turn || !text.trim() || turn.transcriptAt !== null) return;
    mark("partial", itemId);
    view.setText(turn.view.userText, text.trim(), true);
  },

  onTranscript({ itemId, text, error }) {
    const turn = app.turns[itemId];
    if (!turn) return;
    mark("transcript", itemId);
    turn.transcriptAt = performance.now();
    if (error) {
      view.setText(turn.view.userText, "(no transcript)");
      view.setNote(turn.view, "ASR: " + (error.message || "could not transcribe"), "error");
      endTurn(turn);
      return;
    }
    if (!text && app.mode === HANDS_FREE && turn !== app.turn) {
      turn.view.li.remove();                                   // nothing was said: no turn to show
      return;
    }
    view.setText(turn.view.userText, text || "(nothing heard)");
    if (!text || turn.stopped) { endTurn(turn); return; }
    // speaking again already: that turn, when it ends, is answered with this one in its history
    if (app.mode === HANDS_FREE && app.client.phase === "hearing" && turn !== app.turn) { endTurn(turn); return; }
    askForAnswer(turn);
  },

  onResponseStarted({ responseId }) {
    const turn = app.asked;
    app.asked = null;
    mark("response", turn ? turn.key : null);
    if (!turn) return;
    turn.responseId = responseId;
    if (turn.stopped) app.client.cancelResponse();           // cut before its answer began
    render();
  },

  onAnswerText({ responseId, delta }) {
    const turn = turnOfResponse(responseId);
    if (turn) turn.pendingText += delta;
  },

  onAnswerAudio({ responseId, itemId, pcm }) {
    const turn = turnOfResponse(responseId);
    if (!turn) return;
    turn.answerItemId = itemId;
    turn.deliveredBytes += pcm.byteLength;
    const entry = chunkEntry(turn, pcm.byteLength);
    playChunk(turn, pcm16Buffer(app.ctx, pcm), entry);
  },

  onResponseDone({ responseId, itemId, status, details }) {
    const turn = turnOfResponse(responseId);
    if (turn) answerDone(turn, itemId, status, details);
    askNext();
  },

  onTruncated({ itemId }) {
    mark("truncated", itemId);
  },

  onDeleted({ itemId }) {
    mark("deleted", itemId);
  },

  onError(error) {
    console.warn("s2s realtime:", error.code, error.message);
    if (error.code === "conversation_already_has_active_response" && app.asked) {
      app.nextAsk = app.nextAsk || app.asked;                  // asked again once that one is done
      app.asked = null;
    }
    if (error.code === "idle_timeout" || error.code === "shutting_down" || error.code === "too_many_sessions") {
      showError(error.message, "gateway");
    }
  },

  onClosed({ wasOpen }) {
    const turn = app.turn;
    closeClient();
    if (app.listening) {
      stopCapture();
      app.listening = false;
      app.resumeListening = true;
      renderMode();
    }
    if (app.press) discardPress();
    if (turn && !turn.ended && !turn.sessionId) {
      view.setNote(turn.view, "Lost the connection to the gateway during the reply.", "error");
      endTurn(turn);
    }
    if (wasOpen) showError("Lost the connection to the gateway. Retrying every few seconds…", "gateway");
  },
};

// --- hands-free -------------------------------------------------------------------------------------------

function stopCapture() {
  if (app.capture) app.capture.stop();
  app.capture = null;
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

function noMicMessage() {
  if (!window.isSecureContext) return "The microphone needs a secure page: open it as http://localhost or over https.";
  return "This browser cannot record audio (no getUserMedia or MediaRecorder).";
}

async function startListening() {
  if (app.listening) return;
  if (!app.streaming) return showError("This browser cannot stream audio (no AudioWorklet): use push-to-talk.");
  app.listening = true;
  app.resumeListening = false;
  renderMode();
  if (!(await audioRunning())) {                 // no user gesture yet: wait for one
    app.listening = false;
    renderMode();
    say("Press the button (or Space) to start listening.");
    return;
  }
  try {
    await ensureClient();
    const capture = new Capture(app.ctx, sendFrame);
    app.capture = capture;
    if (app.error && app.error.kind !== "gateway") clearError();
    await capture.start();
    if (!app.listening) capture.stop();
  } catch (err) {
    app.listening = false;
    stopCapture();
    renderMode();
    if (err && err.name) showError(micErrorMessage(err));
    else showError(err && err.message ? err.message : String(err), "gateway");
    return;
  }
  if (app.error && app.error.kind === "gateway") clearError();
  render();
}

function stopListening() {
  app.listening = false;
  app.resumeListening = false;
  stopCapture();
  if (app.client) app.client.clearInput();
  const turn = app.turn;
  if (turn && !turn.responseId && !turn.ended && app.client && app.client.phase === "hearing") turn.view.li.remove();
  renderMode();
  render();
}

function setMode(mode) {
  if (mode === app.mode) return;
  app.mode = mode;
  localStorage.setItem(MODE_KEY, mode);
  if (mode === PUSH_TO_TALK && app.listening) stopListening();
  if (app.client) app.client.update({ audio: { input: { turn_detection: mode === HANDS_FREE ? HANDS_FREE_DETECTION : null } } });
  renderMode();
  render();
  if (mode === HANDS_FREE) startListening();
}

// --- push-to-talk -----------------------------------------------------------------------------------------

// A press comes from the pointer, the Space key, or a keyboard/assistive "click" (toggle).
function startPress(source) {
  if (app.press) return;
  ensureAudio();                                // inside the user gesture
  const turn = answerTurn() || app.turn;
  if (turn && !turn.stopped && (playing(turn) || !turn.ended)) {
    mark("interrupted", turn.key);              // talking over the answer interrupts it
    cutAnswer(turn, "Interrupted.", "interrupted");
  }
  if (!app.streaming && !canRecord()) return showError(noMicMessage());
  const press = { source, released: false, releasedAt: 0, capture: null, recording: null, timer: 0 };
  app.press = press;
  app.error = null;
  mark("press");
  say("Opening the microphone…");
  press.timer = setTimeout(() => endPress(null), MAX_RECORDING_MS);
  (app.streaming ? streamPress(press) : recordPress(press)).catch((err) => {
    if (app.press === press) app.press = null;
    clearTimeout(press.timer);
    if (err && err.name) showError(micErrorMessage(err));
    else showError(err && err.message ? err.message : String(err), "gateway");
  });
}

async function streamPress(press) {
  await ensureClient();
  const capture = new Capture(app.ctx, sendFrame);
  press.capture = capture;
  if (press.released) return micClosedEarly(press);
  if (!(await capture.start()) || press.released) { capture.stop(); return micClosedEarly(press); }
  app.flash = null;                             // "Opening the microphone…" is over
  render();
}

async function recordPress(press) {
  const recording = new Recording(app.ctx);
  press.recording = recording;
  if (!(await recording.start()) || press.released) { recording.discard(); return micClosedEarly(press); }
  app.flash = null;
  render();
}

function micClosedEarly(press) {
  if (app.press === press) app.press = null;
  clearTimeout(press.timer);
  if (!press.discarded) say("Keep holding the button while you speak.");
}

function discardPress() {
  const press = app.press;
  if (!press) return;
  press.released = press.discarded = true;
  app.press = null;
  clearTimeout(press.timer);
  if (press.capture) press.capture.stop();
  if (press.recording) press.recording.discard();
  if (app.client && press.capture) app.client.clearInput();
}

function endPress(source) {
  const press = app.press;
  if (!press || press.released || (source && press.source !== source)) return;
  press.released = true;
  press.releasedAt = performance.now();
  mark("release");
  clearTimeout(press.timer);
  if (press.capture && press.capture.stream) {
    press.capture.stop();
    app.press = null;
    if (press.capture.sentMs < MIN_RECORDING_MS) {
      app.client.clearInput();
      return say("That was too short. Hold the button while you speak.");
    }
    app.client.commit();
    newTurn(null, press.releasedAt);
    render();
  } else if (press.recording && press.recording.recorder) {
    app.press = null;
    say("Sending your audio…");
    press.recording.finish().then((rec) => {
      if (!rec || rec.durationMs < MIN_RECORDING_MS || rec.blob.size < 100) {
        return say("That was too short. Hold the button while you speak.");
      }
      sendUpload(rec.blob, press.releasedAt);
    });
  }
}

// --- push-to-talk without AudioWorklet: upload, then Server-Sent Events ------------------------------------

async function sendUpload(blob, releasedAt) {
  const turn = newTurn(null, releasedAt);
  mark("upload");
  render();
  let sessionId;
  try {
    sessionId = await upload(blob, turn.persona);
  } catch (err) {
    if (err.sessionId && turn.stopped) postCancel(err.sessionId);
    if (turn.stopped) return;
    view.setNote(turn.view, err.message, "error");
    endTurn(turn);
    return showError(err.message, err.kind);
  }
  if (turn.stopped) return postCancel(sessionId);
  turn.key = turn.sessionId = sessionId;
  turn.es = openReplyStream(sessionId, {
    onTranscript(text) {
      if (turn.stopped) return;
      mark("transcript", sessionId);
      view.setText(turn.view.userText, text || "(nothing heard)");
    },
    onChunk(data) {
      const entry = chunkEntry(turn, data && typeof data.b64 === "string" ? data.b64.length : 0);
      entry.index = data ? Number(data.index) : null;
      entry.text = data && typeof data.text === "string" ? data.text : "";
      if (!data || typeof data.b64 !== "string" || !entry.live) return;
      // decoded in order, scheduled in order
      turn.decoded = turn.decoded.then(() => decodeWav(app.ctx, data.b64))
        .then((buffer) => playChunk(turn, buffer, entry), () => console.warn("s2s: could not decode a chunk"));
    },
    onDone(data) {
      if (turn.stopped) return;
      mark("done", sessionId);
      turn.es = null;
      if (typeof data.voice === "string" && data.voice) view.setSpokenVoice(turn.view, data.voice);
      turn.timing = data.timing && typeof data.timing === "object" ? data.timing : {};
      showLatency(turn);
      turn.decoded.then(() => endTurn(turn));
    },
    onError(message, kind) {
      if (turn.stopped) return;
      turn.es = null;
      view.setNote(turn.view, message, "error");
      endTurn(turn);
      showError(message, kind);
    },
  });
  render();
}

// --- Stop, Clear, personas ----------------------------------------------------------------------------------

function stopEverything(quiet) {
  discardPress();
  const turn = answerTurn() || app.turn;
  const busy = turn && !turn.stopped && (playing(turn) || !turn.ended);
  if (busy) {
    mark("stop", turn.key);
    cutAnswer(turn, "Stopped.", null);
  } else if (app.player) {
    app.player.stop(0);
  }
  if (!quiet) busy ? say("Stopped.") : render();
}

// A fresh conversation: on the server (a new realtime session; /api/clear for uploads) and here.
async function startAfresh(message) {
  stopEverything(true);
  view.clearConversation();
  app.turn = null;
  const wasListening = app.listening;
  if (wasListening) stopListening();
  closeClient();
  try {
    const res = await apiFetch("/api/clear", { method: "POST" }, 5000);
    if (!res.ok) return showError(errorFromBody(await readJson(res), res, "Could not clear the history"));
  } catch (_) {
    return showError("Cannot reach the gateway to clear the history. Is it running?", "gateway");
  }
  if (wasListening) await startListening();
  if (!app.press && !app.turn) say(message);
}

function renderPersonas(personas, selectedKey) {
  app.personas = personas;
  el.persona.textContent = "";
  personas.forEach((p) => {
    const opt = view.makeEl("option", null, p.name || p.key);
    opt.value = p.key;
    el.persona.appendChild(opt);
  });
  el.persona.value = personaByKey(selectedKey) ? selectedKey : (personas[0] ? personas[0].key : "");
  renderPersonaInfo();
}

function renderPersonaInfo() {
  const p = currentPersona();
  el.personaInfo.textContent = [p && p.style, p && p.voice && "voice " + p.voice].filter(Boolean).join(" · ");
}

async function loadConfig() {
  try {
    const res = await apiFetch("/api/config", {}, 5000);
    const body = await readJson(res);
    const personas = Array.isArray(body && body.personas)
      ? body.personas.filter((p) => p && typeof p.key === "string" && p.key) : [];
    if (!res.ok || !personas.length) throw new Error("bad config");
    // keep a choice made from the fallback list or on an earlier visit, if the server knows it
    const keep = app.userPickedPersona ? el.persona.value : localStorage.getItem(PERSONA_KEY);
    app.configFromServer = true;
    renderPersonas(personas, personaByKey(keep, personas) ? keep : body.default_persona);
    return true;
  } catch (_) {
    if (!app.personas.length) renderPersonas(FALLBACK_PERSONAS, FALLBACK_DEFAULT_PERSONA);
    return false;
  }
}

async function onPersonaChange() {
  app.userPickedPersona = true;
  localStorage.setItem(PERSONA_KEY, el.persona.value);
  renderPersonaInfo();
  const p = currentPersona();
  await startAfresh(p ? "Now talking to " + (p.name || p.key) + "." : undefined);
}

// --- the gateway's health ---------------------------------------------------------------------------------------

async function onStages(stages) {
  const notice = stageNotice(stages);
  const recovered = !notice && !el.notice.hidden;
  view.showNotice(notice);
  const busy = app.press || (app.turn && !app.turn.ended);
  if (!stages) {
    app.gatewayDown = true;
    if (busy || (app.error && app.error.kind === "gateway" && app.error.message === GATEWAY_DOWN)) return;
    return showError(GATEWAY_DOWN, "gateway");
  }
  const wasDown = app.gatewayDown;
  app.gatewayDown = false;
  if (!app.configFromServer && !(await loadConfig())) return;
  if (app.error && app.error.kind === "gateway" && !app.press) {
    app.error = null;
    if (app.resumeListening) await startListening();
    if (wasDown) say("The gateway is back. " + STATUS[currentState()]());
    else render();
  } else if (recovered && currentState() === "idle" && !busy) {
    say("Every stage is ready again. " + STATUS.idle());
  }
}

// --- input ---------------------------------------------------------------------------------------------------------

function isFormControl(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return true;
  return tag === "BUTTON" && target !== el.record;   // Space still activates the other buttons
}

function isSpace(e) {
  return e.code === "Space" || e.key === " " || e.key === "Spacebar";
}

function toggleListening() {
  ensureAudio();                                    // inside the user gesture
  if (app.listening) stopListening();
  else startListening();
}

function bindInput() {
  const btn = el.record;
  btn.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    e.preventDefault();                            // no focus steal, selection or long-press menu
    if (app.mode === HANDS_FREE) return toggleListening();
    try { btn.setPointerCapture(e.pointerId); } catch (_) { /* not supported */ }
    startPress("pointer");
  });
  ["pointerup", "pointercancel", "lostpointercapture"].forEach((type) => btn.addEventListener(type, () => endPress("pointer")));
  document.addEventListener("pointerup", () => endPress("pointer"));   // where pointer capture is missing
  btn.addEventListener("contextmenu", (e) => e.preventDefault());
  // Enter, screen readers and element.click() give a click with detail 0: a toggle
  btn.addEventListener("click", (e) => {
    if (e.detail !== 0) return;
    if (app.mode === HANDS_FREE) return toggleListening();
    if (app.press && app.press.source === "toggle") endPress("toggle");
    else if (!app.press) startPress("toggle");
  });
  document.addEventListener("keydown", (e) => {
    if (!isSpace(e) || e.ctrlKey || e.metaKey || e.altKey || isFormControl(e.target)) return;
    e.preventDefault();                            // no page scroll, no button click
    if (e.repeat) return;
    if (app.mode === HANDS_FREE) toggleListening();
    else startPress("key");
  });
  document.addEventListener("keyup", (e) => {
    if (!isSpace(e) || !app.press || app.press.source !== "key") return;
    e.preventDefault();
    endPress("key");
  });
  window.addEventListener("blur", () => endPress("key"));   // a key released in another window
  el.stop.addEventListener("click", () => stopEverything(false));
  el.clear.addEventListener("click", () => startAfresh("History cleared."));
  el.persona.addEventListener("change", onPersonaChange);
  el.modeHandsFree.addEventListener("change", () => setMode(HANDS_FREE));
  el.modePushToTalk.addEventListener("change", () => setMode(PUSH_TO_TALK));
}

// --- start-up ---------------------------------------------------------------------------------------------------

let visualizer;

async function micAllowed() {
  try {
    return (await navigator.permissions.query({ name: "microphone" })).state === "granted";
  } catch (_) {
    return false;
  }
}

async function init() {
  view.findElements();
  visualizer = new Visualizer(el.visualizer, () => {
    if (app.capture && app.capture.analyser) return app.capture.analyser;
    if (app.press && app.press.recording && app.press.recording.analyser) return app.press.recording.analyser;
    return playing(app.turn) ? app.output : null;
  });
  if (!app.streaming && app.mode === HANDS_FREE) app.mode = PUSH_TO_TALK;
  el.modeHandsFree.disabled = !app.streaming;
  renderMode();
  bindInput();
  say("Connecting to the gateway…");
  const loaded = await loadConfig();
  app.flash = null;
  if (loaded) render();
  else showError("Gateway unreachable: could not load the personas. Retrying…", "gateway");
  if (!app.streaming && !canRecord()) showError(noMicMessage());
  pollStages(el.stages, onStages);
  // hands-free is the default once the microphone is allowed; otherwise the button asks for it
  if (app.mode === HANDS_FREE && !app.error && await micAllowed()) startListening();
}

init();
