/* Bars of the audio level: the microphone's while it is open, the answer's while it plays. */
const USED_BIN_FRACTION = 0.6;     // voice lives in the bottom ~60% of the bins

export class Visualizer {
  /** activeAnalyser(): the analyser to draw now, or null (a flat line, and no animation). */
  constructor(canvas, activeAnalyser) {
    this.canvas = canvas;
    this.activeAnalyser = activeAnalyser;
    this.g = canvas.getContext("2d");
    this.raf = 0;
    this.data = null;
    this.color = null;
    const redraw = () => { this.color = null; if (!this.raf) this.draw(this.activeAnalyser()); };
    if (window.ResizeObserver) new ResizeObserver(redraw).observe(canvas);
    else window.addEventListener("resize", redraw);
    if (window.matchMedia) {
      const mq = window.matchMedia("(prefers-color-scheme: dark)");
      if (mq.addEventListener) mq.addEventListener("change", redraw);
    }
    redraw();
  }

  /** The state changed (its colour comes from CSS) or there is something new to show. */
  wake() {
    this.color = null;
    if (!this.raf) this.raf = requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.raf = 0;
    const analyser = this.activeAnalyser();
    this.draw(analyser);
    if (analyser) this.raf = requestAnimationFrame(() => this.frame());   // idle costs nothing
  }

  draw(analyser) {
    const c = this.canvas;
    const g = this.g;
    if (!g) return;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr));
    const h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }   // crisp on HiDPI
    const mid = h / 2;
    if (!this.color) this.color = getComputedStyle(c).color;
    g.clearRect(0, 0, w, h);
    g.fillStyle = this.color;
    if (!analyser) {
      g.fillRect(0, mid - dpr / 2, w, dpr);
      return;
    }
    const bins = analyser.frequencyBinCount;
    if (!this.data || this.data.length !== bins) this.data = new Uint8Array(bins);
    analyser.getByteFrequencyData(this.data);
    const used = Math.floor(bins * USED_BIN_FRACTION);
    const slot = w / used;
    const barW = Math.max(1, slot * 0.7);
    for (let i = 0; i < used; i++) {
      const half = Math.max(dpr / 2, (this.data[i] / 255) * mid * 0.95);
      g.fillRect(i * slot + (slot - barW) / 2, mid - half, barW, half * 2);
    }
  }
}
