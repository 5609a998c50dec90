/*
 * Reply audio on the AudioContext clock. Each chunk is scheduled to start exactly where the
 * previous one ends (nothing waits for `onended`), so an answer plays with no gap between its
 * chunks; a chunk that arrives after the queue ran dry starts LEAD_S from now, and the gap it
 * leaves is recorded. Each answer has its own gain node, so it can be faded out on its own.
 *
 * Every chunk's debug entry gets: duration, startedAt / endedAt (performance.now() ms of the
 * sound, as the context's output clock places it), gap (ms of silence since the previous chunk
 * of the same answer; null for the first), late (it arrived after the previous one had ended, so
 * the gap is the wait for it), stopped.
 */
const LEAD_S = 0.03;
export const FADE_MS = 60;

export class Player {
  /** output: the node reply audio goes to (an analyser in front of the speakers). */
  constructor(ctx, output, onChunkStart) {
    this.ctx = ctx;
    this.output = output;
    this.onChunkStart = onChunkStart || (() => {});
    this.answer = null;
  }

  // performance.now() at which context time `t` is heard
  perfAt(t) {
    const ts = this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime) return ts.performanceTime + (t - ts.contextTime) * 1000;
    return performance.now() + (t - this.ctx.currentTime) * 1000;
  }

  /** A new answer starts; whatever was playing stops. */
  begin(key) {
    this.stop(0);
    const gain = this.ctx.createGain();
    gain.connect(this.output);
    this.answer = { key, gain, chunks: [] };
    return this.answer;
  }

  play(key, buffer, entry) {
    const a = this.answer && this.answer.key === key ? this.answer : this.begin(key);
    const now = this.ctx.currentTime;
    const prev = a.chunks[a.chunks.length - 1];
    const start = prev && prev.end > now + 0.005 ? prev.end : now + LEAD_S;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(a.gain);
    source.start(start);
    const chunk = { source, start, end: start + buffer.duration, entry };
    a.chunks.push(chunk);
    entry.duration = buffer.duration * 1000;
    entry.startedAt = this.perfAt(start);
    entry.gap = prev ? (start - prev.end) * 1000 : null;
    entry.late = !!prev && prev.end <= now;   // arrived after the previous chunk had ended
    source.onended = () => {
      if (!entry.stopped) entry.endedAt = this.perfAt(chunk.end);
    };
    setTimeout(() => { if (!entry.stopped) this.onChunkStart(entry); },
               Math.max(0, (start - this.ctx.currentTime) * 1000));
  }

  /** Whether the answer `key` (or any) still has audio to play. */
  busy(key) {
    const a = this.answer;
    if (!a || (key !== undefined && a.key !== key) || !a.chunks.length) return false;
    return this.ctx.currentTime < a.chunks[a.chunks.length - 1].end;
  }

  /** When the current answer's audio ends (performance.now()), or 0. */
  endsAt() {
    const a = this.answer;
    return a && a.chunks.length ? this.perfAt(a.chunks[a.chunks.length - 1].end) : 0;
  }

  /** Milliseconds of the answer `key` heard by context time `t` (default now). */
  playedMs(key, t) {
    const a = this.answer;
    if (!a || a.key !== key) return null;
    return heardMs(a, t === undefined ? this.ctx.currentTime : t);
  }

  /** First audio of the current answer (performance.now()), or null before any. */
  firstStart() {
    const a = this.answer;
    return a && a.chunks.length ? a.chunks[0].entry.startedAt : null;
  }

  /**
   * Silence the answer: a fade of fadeMs, then every chunk stops (queued ones never start).
   * Returns {key, playedMs}: what of it was heard, up to the end of the fade.
   */
  stop(fadeMs = FADE_MS) {
    const a = this.answer;
    if (!a) return null;
    this.answer = null;
    const now = this.ctx.currentTime;
    const cut = now + fadeMs / 1000;
    const playedMs = heardMs(a, cut);
    a.gain.gain.setValueAtTime(a.gain.gain.value, now);
    a.gain.gain.linearRampToValueAtTime(0, cut);
    for (const c of a.chunks) {
      if (c.end <= now) continue;                  // already played to its end
      c.entry.stopped = true;
      if (c.start >= cut) {
        c.entry.startedAt = null;                  // was queued, never heard
        c.source.stop();
      } else {
        c.entry.endedAt = this.perfAt(Math.min(cut, c.end));
        c.source.stop(Math.min(cut, c.end));
      }
    }
    setTimeout(() => { try { a.gain.disconnect(); } catch (_) { /* gone */ } }, fadeMs + 50);
    return { key: a.key, playedMs };
  }
}

function heardMs(answer, t) {
  let ms = 0;
  for (const c of answer.chunks) ms += Math.max(0, Math.min(t, c.end) - c.start) * 1000;
  return Math.round(ms);
}

/** 24 kHz PCM16 (the realtime protocol's audio) as an AudioBuffer. */
export function pcm16Buffer(ctx, bytes) {
  const samples = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
  const buffer = ctx.createBuffer(1, Math.max(1, samples.length), 24000);
  const data = buffer.getChannelData(0);
  for (let i = 0; i < samples.length; i++) data[i] = samples[i] / 32768;
  return buffer;
}
