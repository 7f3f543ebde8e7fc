"""Log-mel spectrogram (SPEC §3.3–3.5), computed incrementally.

One implementation serves offline and streaming use: `LogMel` is fed samples of the
padded signal in any chunking and returns every frame whose 400-sample window is
complete. Frame t is centred on sample t * 160 of the padded signal and needs the
samples from t * 160 - 200 to t * 160 + 199 (reflect-padding stands in before the
start and after the end).
"""
from __future__ import annotations

import numpy as np

from .config import AudioConfig

LOG_FLOOR = 1e-10  # log10 floor of the mel power


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3                    # Hz per mel in the linear part
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp     # 15 mels at 1 kHz
    logstep = np.log(6.4) / 27.0        # 27 mels per factor 6.4 in frequency
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), m * f_sp)


def slaney_filters(n_mels: int, n_fft: int, rate: int) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft/2 + 1], area-normalised (librosa norm="slaney")."""
    fft_freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)                    # [201]
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2))  # [130]
    widths = np.diff(edges)                                                    # [129]
    ramps = edges[:, None] - fft_freqs[None, :]                                # [130, 201]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))                     # [128, 201]
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def periodic_hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMel:
    """Incremental log-mel: feed() padded-signal samples, get the frames they complete.

    `finish()` supplies the reflect-padding after the last sample and returns the
    remaining frames, so that exactly len(signal) / hop frames come out in total
    (the STFT's last frame is dropped, SPEC §3.3).
    """

    def __init__(self, cfg: AudioConfig):
        self.hop = cfg.hop_length                        # 160
        self.n_fft = cfg.window_size                     # 400
        self.half = self.n_fft // 2                      # 200 samples each side of a centre
        self.floor = cfg.log_mel_max - 8.0               # 1.5 - 8 = -6.5
        self.window = periodic_hann(self.n_fft)
        self.filters = slaney_filters(cfg.n_mels, self.n_fft, cfg.sampling_rate)
        self.n_mels = cfg.n_mels
        self._buf = np.zeros(0, dtype=np.float32)       # window samples not yet consumed
        self._started = False                           # start reflect-pad in place?
        self._next = 0                                  # index of the next frame to emit
        self._n_samples = 0                             # signal samples fed so far

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Append signal samples; returns [n_mels, k] for the k frames now complete."""
        self._n_samples += len(samples)
        self._buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32)])
        if not self._started:
            if len(self._buf) <= self.half:
                return np.zeros((self.n_mels, 0), dtype=np.float32)
            head = self._buf[1:self.half + 1][::-1]     # sample -i is sample i
            self._buf = np.concatenate([head, self._buf])
            self._started = True
        return self._emit(len(self._buf))

    def snapshot(self) -> tuple:
        return self._buf.copy(), self._started, self._next, self._n_samples

    def restore(self, snap: tuple) -> None:
        buf, self._started, self._next, self._n_samples = snap
        self._buf = buf.copy()

    def finish(self) -> np.ndarray:
        """Reflect-pad the end and return the last frames (total = samples / hop)."""
        if not self._started:
            raise ValueError(f"a signal of {self._n_samples} samples is too short to reflect-pad")
        tail = self._buf[-self.half - 1:-1][::-1]       # sample n-1+i is sample n-1-i
        self._buf = np.concatenate([self._buf, tail])
        return self._emit(len(self._buf), limit=self._n_samples // self.hop)

    def _emit(self, available: int, limit: int | None = None) -> np.ndarray:
        k = 0 if available < self.n_fft else (available - self.n_fft) // self.hop + 1
        if limit is not None:
            k = min(k, limit - self._next)
        if k <= 0:
            return np.zeros((self.n_mels, 0), dtype=np.float32)
        out = log_mel_frames(self._buf, k, self.hop, self.window, self.filters, self.floor)
        self._buf = self._buf[k * self.hop:]
        self._next += k
        return out


def log_mel_frames(x: np.ndarray, k: int, hop: int, window: np.ndarray, filters: np.ndarray,
                   floor: float) -> np.ndarray:
    """k frames of x (frame i = x[i*hop : i*hop + n_fft]) -> log-mel [n_mels, k], SPEC §3.3-3.5."""
    n_fft = len(window)
    idx = np.arange(k)[:, None] * hop + np.arange(n_fft)[None, :]
    frames = x[idx].astype(np.float64) * window                      # [k, 400]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2         # [k, 201]
    mel = filters @ power.T                                           # [128, k]
    log = np.log10(np.maximum(mel, LOG_FLOOR))
    log = np.maximum(log, floor)
    return ((log + 4.0) / 4.0).astype(np.float32)
