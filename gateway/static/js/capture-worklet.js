/*
 * On the audio thread: the microphone, mixed to mono and resampled to 24 kHz, posted to the
 * page as PCM16 frames of 40 ms (the realtime protocol's audio/pcm), each with its peak level.
 *
 * Downsampling averages the input samples that fall in each output sample's span (a box
 * low-pass, enough for speech); upsampling interpolates linearly.
 */
const OUT_RATE = 24000;
const FRAME_SAMPLES = 960; // 40 ms at 24 kHz

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / OUT_RATE; // input samples per output sample
    this.next = this.ratio;             // input position where the next output sample ends
    this.pos = 0;                       // input samples seen
    this.sum = 0;
    this.count = 0;
    this.last = 0;                      // previous input sample (upsampling)
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.peak = 0;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.peak = Math.max(this.peak, Math.abs(v));
    this.frame[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
    if (this.filled === FRAME_SAMPLES) {
      this.port.postMessage({ pcm: this.frame.buffer, peak: this.peak }, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME_SAMPLES);
      this.filled = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let c = 0; c < channels.length; c++) s += channels[c][i];
      s /= channels.length;
      this.pos += 1;
      if (this.ratio >= 1) {
        this.sum += s;
        this.count += 1;
        if (this.pos >= this.next) {
          this.emit(this.sum / this.count);
          this.sum = 0;
          this.count = 0;
          this.next += this.ratio;
        }
      } else {
        while (this.next <= this.pos) {
          const frac = this.next - (this.pos - 1);  // 0..1 between the previous sample and this one
          this.emit(this.last + (s - this.last) * frac);
          this.next += this.ratio;
        }
        this.last = s;
      }
    }
    return true;
  }
}

registerProcessor("s2s-capture", CaptureProcessor);
