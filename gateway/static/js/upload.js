/*
 * Push-to-talk for browsers without AudioWorklet: the recording (MediaRecorder) is uploaded
 * when the button comes up (POST /upload) and the answer comes back as Server-Sent Events
 * (GET /stream/{id}: transcript, chunk (WAV, base64), done, error).
 */
import { MIC_CONSTRAINTS } from "./capture.js";
import { SSE_EVENTS } from "./contract.js";
import { apiFetch, errorFromBody, readJson } from "./http.js";

// preferred recording formats, best first; the gateway decodes with ffmpeg
const RECORDING_TYPES = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"];

export function canRecord() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
}

export class Recording {
  constructor(ctx) {
    this.ctx = ctx;
    this.stream = null;
    this.recorder = null;
    this.chunks = [];
    this.analyser = null;
    this.startedAt = 0;
    this.discarded = false;
  }

  /** Opens the microphone and records; throws getUserMedia's error. False if discarded meanwhile. */
  async start() {
    const stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    this.stream = stream;
    if (this.discarded) { this.release(); return false; }
    const type = RECORDING_TYPES.find((t) => MediaRecorder.isTypeSupported && MediaRecorder.isTypeSupported(t)) || "";
    this.recorder = type ? new MediaRecorder(stream, { mimeType: type }) : new MediaRecorder(stream);
    this.recorder.ondataavailable = (e) => { if (e.data && e.data.size) this.chunks.push(e.data); };
    this.recorder.start();
    this.startedAt = performance.now();
    if (this.ctx) {
      this.source = this.ctx.createMediaStreamSource(stream);
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 256;
      this.source.connect(this.analyser);      // the visualizer only, never the speakers
    }
    return true;
  }

  /** Stops recording; resolves to {blob, durationMs}, or null if nothing was recording. */
  finish() {
    const rec = this.recorder;
    if (!rec || rec.state !== "recording") { this.release(); return Promise.resolve(null); }
    return new Promise((resolve) => {
      rec.onstop = () => {
        this.release();
        const type = rec.mimeType || (this.chunks[0] && this.chunks[0].type) || "audio/webm";
        resolve({ blob: new Blob(this.chunks, { type }), durationMs: performance.now() - this.startedAt });
      };
      rec.stop();
    });
  }

  discard() {
    this.discarded = true;
    if (this.recorder && this.recorder.state === "recording") {
      this.recorder.onstop = null;
      this.recorder.stop();
    }
    this.release();
  }

  release() {
    if (this.source) { try { this.source.disconnect(); } catch (_) { /* gone */ } }
    this.source = this.analyser = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
  }
}

/** Uploads a recording; resolves to the session id, or throws an Error with .kind "gateway" when unreachable. */
export async function upload(blob, persona) {
  let res;
  try {
    res = await apiFetch("/upload?persona=" + encodeURIComponent(persona), {
      method: "POST", headers: { "Content-Type": blob.type || "application/octet-stream" }, body: blob,
    });
  } catch (_) {
    throw Object.assign(new Error("Cannot reach the gateway. Is it running?"), { kind: "gateway" });
  }
  const body = await readJson(res);
  const sessionId = body && typeof body.session_id === "string" ? body.session_id : null;
  if (!res.ok || !sessionId) {
    throw Object.assign(new Error(res.ok ? "The gateway sent no session id." : errorFromBody(body, res, "Upload failed")),
                        { sessionId });
  }
  return sessionId;
}

/** The answer's events: handlers.onTranscript(text), onChunk(data, raw), onDone(data), onError(message, kind). */
export function openReplyStream(sessionId, handlers) {
  const es = new EventSource("/stream/" + encodeURIComponent(sessionId));
  let gotEvent = false;
  const parse = (ev) => {
    try { return JSON.parse(ev.data); } catch (_) { return null; }
  };
  es.addEventListener(SSE_EVENTS.TRANSCRIPT, (ev) => {
    gotEvent = true;
    const data = parse(ev);
    handlers.onTranscript(data && typeof data.text === "string" ? data.text.trim() : "");
  });
  es.addEventListener(SSE_EVENTS.CHUNK, (ev) => { gotEvent = true; handlers.onChunk(parse(ev)); });
  es.addEventListener(SSE_EVENTS.DONE, (ev) => { es.close(); handlers.onDone(parse(ev) || {}); });
  // "error" is both the server's event (it has data) and EventSource's own (it has none)
  es.addEventListener(SSE_EVENTS.ERROR, (ev) => {
    es.close();
    if (typeof ev.data === "string") {
      const data = parse(ev);
      let message = data && typeof data.message === "string" && data.message ? data.message : "The assistant failed.";
      const stage = data && typeof data.stage === "string" ? data.stage : "";
      if (stage && message.toLowerCase().indexOf(stage.toLowerCase()) < 0) message = stage.toUpperCase() + ": " + message;
      handlers.onError(message, null);
    } else {
      handlers.onError(gotEvent ? "Lost the connection to the gateway during the reply."
                                : "Could not open the reply stream from the gateway.", "gateway");
    }
  });
  return es;
}

export function postCancel(sessionId) {
  // keepalive so the cancel still goes out if the page is being closed
  apiFetch("/api/cancel/" + encodeURIComponent(sessionId), { method: "POST", keepalive: true })
    .catch(() => { /* the closed stream also cancels the turn server-side */ });
}

export async function decodeWav(ctx, b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return ctx.decodeAudioData(bytes.buffer);
}
