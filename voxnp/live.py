"""Live input: standard input (WAV or raw s16le) and the microphone, fed to a live Stream.

Standard input is read as it arrives (partial reads are fine). A RIFF/WAVE header is
detected and parsed, including the unset data size that ffmpeg writes when piping;
anything else is raw signed 16-bit little-endian mono at 16 kHz. WAV input of another
rate or channel count goes through the same preparation as files (channel mean, soxr
"HQ", 16-bit round trip), incrementally.
"""
from __future__ import annotations

import os
import queue
import signal
import struct
import sys

import numpy as np

from .audio import MODEL_RATE, int16_round_trip, s16le_to_float
from .errors import VoxnpError
from .stream import Stream

READ_BYTES = 1 << 14           # bytes per read from stdin (~0.5 s of 16 kHz s16le)
WAVE_FORMAT_PCM, WAVE_FORMAT_FLOAT, WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE


class PcmDecoder:
    """Bytes of one interleaved PCM format -> prepared float32 mono 16 kHz, incrementally."""

    def __init__(self, rate: int = MODEL_RATE, channels: int = 1, float32: bool = False):
        self.rate, self.channels, self.float32 = rate, channels, float32
        self.frame_bytes = channels * (4 if float32 else 2)
        self._carry = b""
        self._resampler = None
        if rate != MODEL_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, MODEL_RATE, 1, dtype="float32", quality="HQ")
        self.exact = rate == MODEL_RATE and channels == 1 and not float32  # s16 16 kHz mono

    def push(self, data: bytes, last: bool = False) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % self.frame_bytes
        self._carry = data[usable:]
        if self.float32:
            x = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
        else:
            x = s16le_to_float(data[:usable])
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last).astype(np.float32)
        if self.exact or len(x) == 0:
            return x
        return int16_round_trip(x)

    @property
    def leftover(self) -> int:
        return len(self._carry)


def parse_wav_header(buf: bytes) -> tuple[PcmDecoder, int] | None:
    """(decoder, offset of the sample data) once `buf` holds the whole header, else None.

    Raises VoxnpError for a header that is not usable. The data chunk's size is ignored
    (ffmpeg writes 0 or 0xFFFFFFFF when piping): samples run to the end of input.
    """
    if len(buf) < 12:
        return None
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise VoxnpError("stdin: RIFF header without WAVE format")
    pos, fmt = 12, None
    while True:
        if len(buf) < pos + 8:
            return None
        chunk, size = buf[pos:pos + 4], struct.unpack("<I", buf[pos + 4:pos + 8])[0]
        if chunk == b"data":
            if fmt is None:
                raise VoxnpError("stdin: WAV data chunk before its fmt chunk")
            return fmt, pos + 8
        if len(buf) < pos + 8 + size:
            return None
        if chunk == b"fmt ":
            fmt = _wav_format(buf[pos + 8:pos + 8 + size])
        pos += 8 + size + (size & 1)


def _wav_format(body: bytes) -> PcmDecoder:
    if len(body) < 16:
        raise VoxnpError("stdin: WAV fmt chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]
    if channels < 1 or rate < 1:
        raise VoxnpError(f"stdin: WAV header with {channels} channels at {rate} Hz")
    if (tag, bits) == (WAVE_FORMAT_PCM, 16):
        return PcmDecoder(rate, channels, float32=False)
    if (tag, bits) == (WAVE_FORMAT_FLOAT, 32):
        return PcmDecoder(rate, channels, float32=True)
    raise VoxnpError(f"stdin: unsupported WAV format (format tag {tag}, {bits} bits); "
                     "only 16-bit PCM and 32-bit float are read")


def _read_chunks(fd: int):
    """Bytes from a file descriptor as they arrive, until end of input."""
    while True:
        try:
            data = os.read(fd, READ_BYTES)
        except InterruptedError:
            continue
        if not data:
            return
        yield data


def stdin_audio(fd: int | None = None):
    """Yield prepared float32 chunks from standard input until it closes."""
    fd = sys.stdin.fileno() if fd is None else fd
    head, decoder = b"", None
    for data in _read_chunks(fd):
        if decoder is None:                      # still looking at the first bytes
            head += data
            if len(head) < 4:
                continue
            if head[:4] != b"RIFF":
                decoder, data = PcmDecoder(), head       # raw s16le 16 kHz mono
            else:
                parsed = parse_wav_header(head)
                if parsed is None:
                    continue
                decoder, offset = parsed
                data = head[offset:]
        yield decoder.push(data)
    if decoder is None:
        if not head:
            raise VoxnpError("stdin: no audio (input was empty)")
        if b"RIFF".startswith(head) or head[:4] == b"RIFF":
            raise VoxnpError("stdin: truncated WAV header")
        decoder = PcmDecoder()
        yield decoder.push(head)
    tail = decoder.push(b"", last=True)
    if len(tail):
        yield tail
    if decoder.leftover:
        print(f"voxnp: warning: stdin: ignored {decoder.leftover} trailing byte(s) "
              "(not a whole sample)", file=sys.stderr, flush=True)


class SilenceGate:
    """Skips long silences of live audio (as voxtral.c): 10 ms windows with RMS below
    `threshold` are silence; after `hold_s` of silence, audio is dropped and the stream
    flushed once, until speech returns."""

    def __init__(self, threshold: float = 0.002, hold_s: float = 0.6, window: int = 160):
        self.threshold, self.window = threshold, window
        self.hold = int(hold_s * MODEL_RATE / window)
        self.silent_windows = 0
        self.flushed = False

    def filter(self, x: np.ndarray, stream: Stream) -> np.ndarray:
        keep = []
        for start in range(0, len(x), self.window):
            w = x[start:start + self.window]
            if np.sqrt(np.mean(w * w)) > self.threshold:
                self.silent_windows, self.flushed = 0, False
                keep.append(w)
            else:
                self.silent_windows += 1
                if self.silent_windows <= self.hold:
                    keep.append(w)
                elif not self.flushed:
                    if keep:
                        stream.feed(np.concatenate(keep))
                        keep = []
                    stream.flush()
                    self.flushed = True
        return np.concatenate(keep) if keep else np.zeros(0, np.float32)


def microphone_audio(block_s: float = 0.1, max_backlog_s: float = 5.0, keep_s: float = 1.0):
    """Yield float32 16 kHz chunks from the default input device until Ctrl-C."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise VoxnpError(f"--from-mic needs the `sounddevice` package and PortAudio "
                         f"(pip install \"voxnp[mic]\"; apt install libportaudio2): {e}") from None
    blocks: queue.Queue = queue.Queue()

    def callback(indata, frames, t, status):
        blocks.put(indata[:, 0].copy())

    try:
        sd.query_devices(kind="input")
        mic = sd.InputStream(samplerate=MODEL_RATE, channels=1, dtype="float32",
                             blocksize=int(block_s * MODEL_RATE), callback=callback)
    except Exception as e:  # PortAudioError, ValueError: no device
        raise VoxnpError(f"microphone: no usable input device ({e})") from None
    with mic:
        while True:
            chunk = [blocks.get()]
            while not blocks.empty():
                chunk.append(blocks.get_nowait())
            x = np.concatenate(chunk)
            if len(x) > max_backlog_s * MODEL_RATE:
                print(f"\nvoxnp: warning: processing fell {len(x) / MODEL_RATE:.1f} s behind real time; "
                      f"skipping to the last {keep_s:.0f} s", file=sys.stderr, flush=True)
                x = x[-int(keep_s * MODEL_RATE):]
            yield x


def until_interrupted(chunks):
    """Yield chunks until they end or Ctrl-C. A SIGINT while waiting for input ends the
    input at once; one while the model runs ends it after that chunk, so the stream is
    never cut off in the middle of a step and what was read is all transcribed."""
    state = {"reading": False, "asked": False}

    def on_sigint(signum, frame):
        state["asked"] = True
        if state["reading"]:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:                           # not the main thread: Ctrl-C stays Python's
        previous = None
    it = iter(chunks)
    try:
        while not state["asked"]:
            state["reading"] = True
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                state["reading"] = False
            yield x
    except KeyboardInterrupt:
        state["asked"] = True
    finally:
        if hasattr(it, "close"):
            it.close()                           # the microphone stops here
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if state["asked"]:
            print("\nvoxnp: interrupted; finishing what arrived", file=sys.stderr, flush=True)


def recorded(chunks, path):
    """Pass float32 16 kHz chunks through, writing each to a PCM16 WAV file first."""
    import soundfile as sf

    try:
        out = sf.SoundFile(path, "w", samplerate=MODEL_RATE, channels=1, subtype="PCM_16")
    except (sf.LibsndfileError, OSError) as e:
        raise VoxnpError(f"--record {path}: cannot write ({e})") from None
    with out:
        for x in chunks:
            out.write(np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16))
            out.flush()
            yield x


def run_live(model, printer, source: str = "stdin", interval: float = 2.0, record=None, **options):
    """Transcribe stdin or the microphone until it ends (or Ctrl-C); returns the timings.
    record: a WAV path that gets the audio as read (before the microphone's silence gate).
    options: as for Stream (delay_ms, alt, speculate, ...)."""
    stream = Stream(model, interval=interval, live=True, on_token=printer.token, **options)
    gate = SilenceGate() if source == "mic" else None
    chunks = until_interrupted(microphone_audio() if source == "mic" else stdin_audio())
    if record is not None:
        chunks = recorded(chunks, record)
    try:
        for x in chunks:
            stream.feed(gate.filter(x, stream) if gate else x)
    finally:
        stream.finish()
        printer.end()
    stream.timings.audio_s = stream.audio_seconds
    return stream.timings
