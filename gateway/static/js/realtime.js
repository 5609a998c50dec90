/*
 * The page's side of GET /v1/realtime (the OpenAI Realtime protocol; docs/REALTIME.md). Opens
 * the socket, sends audio and commands, and turns the server's events into calls on `handlers`,
 * keeping where the conversation is (`phase`):
 *
 *   listening --speech_started--> hearing --committed--> thinking --response.created--> answering
 *       ^                                                                                  |
 *       +--------------------- response.done (or an empty / failed transcript) ------------+
 *
 * Speech that starts while answering moves to `hearing` at once: the page decides whether that
 * interrupts the answer, and whether a turn is answered (main.js: its echo guard); the server
 * neither interrupts nor answers by itself (interrupt_response and create_response are off).
 */
const RETRIEVE = "retrieve_";       // event_id prefix of conversation.item.retrieve

export class RealtimeClient {
  constructor(handlers) {
    this.h = handlers;
    this.ws = null;
    this.phase = "closed";
    this.responseId = null;        // the response in progress
    this.answerItem = {};          // response id -> its assistant item id
    this.partials = {};            // user item id -> partial transcript so far
    this.sent = [];                // [performance.now(), type, fields] of every command but audio (tests read it)
    this.retrieving = {};          // item id -> resolvers waiting for conversation.item.retrieved
  }

  setPhase(phase) {
    if (phase === this.phase) return;
    this.phase = phase;
    this.h.onPhase(phase);
  }

  /** Opens the socket with these session settings; resolves once the server applied them. */
  open(session) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/v1/realtime");
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let ready = false;
      ws.onmessage = (msg) => {
        let ev;
        try { ev = JSON.parse(msg.data); } catch (_) { return; }
        if (!ready && ev.type === "session.created") {
          this.send("session.update", { session: { type: "realtime", ...session } });
        } else if (!ready && ev.type === "session.updated") {
          ready = true;
          this.setPhase("listening");
          resolve(ev.session);
        } else if (!ready && ev.type === "error") {
          reject(new Error(ev.error && ev.error.message || "The realtime session failed."));
        } else if (ready) {
          this.dispatch(ev);
        }
      };
      ws.onclose = (e) => {
        const wasOpen = ready;
        if (this.ws === ws) {
          this.ws = null;
          this.responseId = null;
          this.setPhase("closed");
        }
        if (!ready) reject(new Error("Could not open the realtime connection to the gateway."));
        else if (this.closing !== ws) this.h.onClosed({ code: e.code, reason: e.reason, wasOpen });  // not asked for
      };
    });
  }

  get isOpen() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }

  send(type, fields) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    if (type !== "input_audio_buffer.append") this.sent.push([performance.now(), type, fields || {}]);
    this.ws.send(JSON.stringify({ type, ...(fields || {}) }));
    return true;
  }

  update(session) { return this.send("session.update", { session: { type: "realtime", ...session } }); }
  append(pcm) { return this.send("input_audio_buffer.append", { audio: toBase64(pcm) }); }
  commit() { return this.send("input_audio_buffer.commit"); }
  clearInput() { return this.send("input_audio_buffer.clear"); }
  createResponse() { return this.send("response.create"); }
  cancelResponse() { return this.responseId ? this.send("response.cancel") : false; }
  truncate(itemId, audioEndMs) {
    return this.send("conversation.item.truncate", { item_id: itemId, content_index: 0, audio_end_ms: audioEndMs });
  }

  deleteItem(itemId) { return this.send("conversation.item.delete", { item_id: itemId }); }

  /** The server's record of an item (what the next answer reads), or null if it has none. */
  retrieve(itemId) {
    return new Promise((resolve) => {
      (this.retrieving[itemId] = this.retrieving[itemId] || []).push(resolve);
      // the event id names the item, so an item_not_found error settles the right wait
      const sent = this.send("conversation.item.retrieve", { item_id: itemId, event_id: RETRIEVE + itemId });
      if (!sent) this.settleRetrieve(itemId, null);
    });
  }

  settleRetrieve(itemId, item) {
    (this.retrieving[itemId] || []).forEach((resolve) => resolve(item));
    delete this.retrieving[itemId];
  }

  close() {
    if (!this.ws) return;
    this.closing = this.ws;
    this.ws.close();
  }

  dispatch(ev) {
    const h = this.h;
    switch (ev.type) {
      case "input_audio_buffer.speech_started":
        this.setPhase("hearing");
        h.onSpeechStarted({ itemId: ev.item_id, audioStartMs: ev.audio_start_ms });
        break;
      case "input_audio_buffer.speech_stopped":
        h.onSpeechStopped({ itemId: ev.item_id, audioEndMs: ev.audio_end_ms });
        break;
      case "input_audio_buffer.committed":
        if (this.phase === "hearing" || this.phase === "listening") this.setPhase("thinking");
        h.onCommitted({ itemId: ev.item_id });
        break;
      case "conversation.item.input_audio_transcription.delta":
        this.partials[ev.item_id] = (this.partials[ev.item_id] || "") + ev.delta;
        h.onPartial({ itemId: ev.item_id, text: this.partials[ev.item_id] });
        break;
      case "conversation.item.input_audio_transcription.completed":
      case "conversation.item.input_audio_transcription.failed": {
        const failed = ev.type.endsWith("failed");
        const text = failed ? "" : (ev.transcript || "").trim();
        delete this.partials[ev.item_id];
        if ((failed || !text) && this.phase === "thinking") this.setPhase("listening");
        h.onTranscript({ itemId: ev.item_id, text, error: failed ? ev.error : null });
        break;
      }
      case "response.created":
        this.responseId = ev.response.id;
        if (this.phase !== "hearing") this.setPhase("answering");
        h.onResponseStarted({ responseId: ev.response.id });
        break;
      case "response.output_item.added":
        this.answerItem[ev.response_id] = ev.item.id;
        break;
      case "response.output_audio_transcript.delta":
        h.onAnswerText({ responseId: ev.response_id, itemId: ev.item_id, delta: ev.delta });
        break;
      case "response.output_audio.delta":
        h.onAnswerAudio({ responseId: ev.response_id, itemId: ev.item_id, pcm: fromBase64(ev.delta) });
        break;
      case "response.done": {
        const r = ev.response;
        if (this.responseId === r.id) this.responseId = null;
        if (this.phase === "answering") this.setPhase("listening");
        h.onResponseDone({ responseId: r.id, itemId: this.answerItem[r.id] || null, status: r.status,
                           details: r.status_details });
        delete this.answerItem[r.id];
        break;
      }
      case "conversation.item.truncated":
        h.onTruncated({ itemId: ev.item_id, audioEndMs: ev.audio_end_ms });
        break;
      case "conversation.item.deleted":
        h.onDeleted({ itemId: ev.item_id });
        break;
      case "conversation.item.retrieved":
        this.settleRetrieve(ev.item.id, ev.item);
        break;
      case "error": {
        const error = ev.error || {};
        const id = error.event_id || "";
        if (id.startsWith(RETRIEVE)) this.settleRetrieve(id.slice(RETRIEVE.length), null);
        h.onError(error);
        break;
      }
      default:
        break;                                 // session.updated, item added/done, truncated...
    }
  }
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

function fromBase64(b64) {
  // atob rather than fetch(data:): the CSP's connect-src does not allow data:
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}
