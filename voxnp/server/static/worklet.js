// AudioWorklet: the microphone at the context's rate -> 16 kHz mono PCM16 chunks.
//
// Resampling is a windowed-sinc low-pass (cut below the new Nyquist, Blackman window,
// normalised to unit gain at DC) evaluated at each output instant; channels are
// averaged. Every `chunk` output samples go to the page as an Int16Array with the
// chunk's RMS level; the message "flush" sends what is left (then {flushed: true}).

const PHASES = 1024;

class Pcm16Resampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.rate = opts.rate || 16000;
    this.chunk = opts.chunk || 1600;
    this.step = sampleRate / this.rate;                 // input samples per output sample
    this.cutoff = 0.92 * Math.min(1, 1 / this.step);    // of the input's Nyquist
    this.half = Math.ceil(12 / this.cutoff);            // taps each side, in input samples
    this.buf = new Float32Array(4096);
    this.len = this.half;                               // zeros before the first sample
    this.t = this.half;                                 // next output instant, in buf indices
    this.out = new Int16Array(this.chunk);
    this.n = 0;
    this.table = new Map();
    this.port.onmessage = (e) => { if (e.data === "flush") this.flush(); };
  }

  kernel(x) {                                           // windowed sinc at distance x
    if (Math.abs(x) >= this.half) return 0;
    const w = 0.42 + 0.5 * Math.cos(Math.PI * x / this.half) + 0.08 * Math.cos(2 * Math.PI * x / this.half);
    const a = Math.PI * this.cutoff * x;
    return w * (x === 0 ? 1 : Math.sin(a) / a);
  }

  weights(frac) {                                       // the taps for an instant `frac` past a sample
    const key = Math.round(frac * PHASES);               // phases cached at 1/PHASES of a sample
    let h = this.table.get(key);
    if (!h) {
      h = new Float32Array(2 * this.half);
      let norm = 0;
      for (let j = 0; j < h.length; j++) norm += (h[j] = this.kernel(key / PHASES + this.half - 1 - j));
      for (let j = 0; j < h.length; j++) h[j] /= norm;
      this.table.set(key, h);
    }
    return h;
  }

  push(samples) {
    if (this.len + samples.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + samples.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(samples, this.len);
    this.len += samples.length;
    while (Math.floor(this.t) + this.half < this.len) {
      const base = Math.floor(this.t);
      const h = this.weights(this.t - base);
      let sum = 0;
      for (let j = 0, k = base - this.half + 1; j < h.length; j++, k++) sum += h[j] * this.buf[k];
      this.emit(sum);
      this.t += this.step;
    }
    const keep = Math.floor(this.t) - this.half + 1;    // samples still needed start here
    if (keep > 0) {
      this.buf.copyWithin(0, keep, this.len);
      this.len -= keep;
      this.t -= keep;
    }
  }

  emit(y) {
    const s = Math.round(y * 32768);
    this.out[this.n++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
    if (this.n === this.chunk) this.send();
  }

  send() {
    const pcm = this.out.slice(0, this.n);
    let energy = 0;
    for (let i = 0; i < pcm.length; i++) energy += (pcm[i] / 32768) ** 2;
    this.port.postMessage({ pcm, level: Math.sqrt(energy / Math.max(1, pcm.length)) }, [pcm.buffer]);
    this.n = 0;
  }

  flush() {
    if (this.n) this.send();
    this.port.postMessage({ flushed: true });
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      let mono = channels[0];
      if (channels.length > 1) {
        mono = new Float32Array(mono.length);
        for (const c of channels) for (let i = 0; i < c.length; i++) mono[i] += c[i] / channels.length;
      }
      this.push(mono);
    }
    return true;
  }
}

registerProcessor("pcm16-resampler", Pcm16Resampler);
