/*
 * The microphone as 24 kHz mono PCM16 frames (capture-worklet.js does the resampling), with
 * the browser's echo cancellation, noise suppression and gain control on. It keeps when each
 * frame arrived and how loud it was, so the page can tell when speech ended on its own clock.
 */
export const SAMPLE_RATE = 24000;
const FRAME_LOG_MS = 30000;        // how much of the frame history to keep
const QUIET_PEAK = 0.02;            // a frame quieter than this (about -34 dBFS) is not speech

export const MIC_CONSTRAINTS = {
  audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
};

const loadedWorklets = new WeakSet();

/** How long a frame of 24 kHz PCM16 lasts, in ms. */
export function pcmMs(pcm) { return (pcm.byteLength / 2) * 1000 / SAMPLE_RATE; }

export function canStream() {
  return !!(window.AudioWorkletNode && window.AudioContext && navigator.mediaDevices
            && navigator.mediaDevices.getUserMedia);
}

export class Capture {
  /** ctx: the page's AudioContext; onFrame(pcm: ArrayBuffer) for each 40 ms frame. */
  constructor(ctx, onFrame) {
    this.ctx = ctx;
    this.onFrame = onFrame;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.analyser = null;
    this.sentMs = 0;              // audio handed to onFrame so far
    this.frames = [];             // {endMs, peak, at}: at = performance.now() when it arrived
    this.stopped = false;
  }

  /** Opens the microphone; throws the getUserMedia error (NotAllowedError...) as is. */
  async start() {
    if (!loadedWorklets.has(this.ctx)) {
      await this.ctx.audioWorklet.addModule("/static/js/capture-worklet.js");
      loadedWorklets.add(this.ctx);
    }
    const stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    if (this.stopped) {                     // stopped while the browser was asking
      stream.getTracks().forEach((t) => t.stop());
      return false;
    }
    this.stream = stream;
    this.source = this.ctx.createMediaStreamSource(stream);
    this.node = new AudioWorkletNode(this.ctx, "s2s-capture", { numberOfInputs: 1, numberOfOutputs: 1,
                                                                  channelCount: 1, channelCountMode: "explicit" });
    this.node.port.onmessage = (e) => this.frame(e.data);
    this.source.connect(this.node);
    // the worklet writes silence; connected so that the graph pulls it
    this.node.connect(this.ctx.destination);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 256;
    this.source.connect(this.analyser);   // the visualizer only, never the speakers
    return true;
  }

  /** Whether the microphone is open and its frames flow to onFrame. */
  get live() { return !!this.stream && !this.stopped; }

  frame(data) {
    if (this.stopped) return;
    const ms = pcmMs(data.pcm);
    this.sentMs += ms;
    this.frames.push({ endMs: this.sentMs, peak: data.peak, at: performance.now() });
    while (this.frames.length && this.frames[0].endMs < this.sentMs - FRAME_LOG_MS) this.frames.shift();
    this.onFrame(data.pcm);
  }

  /** Whether the last `ms` of audio captured were all quieter than speech. */
  quietFor(ms) {
    const recent = this.frames.filter((f) => f.endMs > this.sentMs - ms);
    return recent.length > 0 && recent.every((f) => f.peak < QUIET_PEAK);
  }

  /**
   * When (performance.now()) the speech before audio position `endMs` ended: the arrival of
   * the last frame louder than QUIET_PEAK before it, or of the frame at `endMs` if none is
   * known. The server's speech_stopped comes after some silence; this takes that back off.
   */
  speechEndBefore(endMs) {
    let atEnd = null;
    for (let i = this.frames.length - 1; i >= 0; i--) {
      const f = this.frames[i];
      if (f.endMs > endMs + 40) continue;
      if (atEnd === null) atEnd = f;
      if (f.peak >= QUIET_PEAK) return f.at;
    }
    return atEnd ? atEnd.at : performance.now();
  }

  stop() {
    this.stopped = true;
    for (const node of [this.source, this.node, this.analyser]) {
      if (node) {
        try { node.disconnect(); } catch (_) { /* already gone */ }
      }
    }
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.source = this.node = this.analyser = this.stream = null;
  }
}
