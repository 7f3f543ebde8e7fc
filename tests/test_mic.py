"""`voxnp --from-mic` through a real audio stack: a PulseAudio server of the test's own with a
null sink whose monitor is the default source, PortAudio reading it through ALSA's pulse
plugin (sounddevice), and SAMPLE played into the sink with `paplay`.

What the microphone hears depends on when capture and playback start, so voxnp records it
(`--record`, the audio as read, before the silence gate). The test checks that the
recording is an exact slice of SAMPLE (the stack is bit-exact at 16 kHz s16 mono: real
audio, not silence) and that the printed text equals `voxnp RECORDING`'s, character for
character. Ctrl-C (SIGINT) is sent while SAMPLE still plays: voxnp must flush the
transcript and exit 0. The silence gate keeps everything here (SAMPLE has no 0.6 s
silence and the capture is cut while it plays), so the two paths see the same samples.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio

SAMPLE = "5s_dont_worry_about_him.wav"
SINK = "voxnp_test_sink"


def pulse_problem() -> str | None:
    for program in ("pulseaudio", "paplay", "pactl"):
        if not shutil.which(program):
            return f"{program} is missing (apt-get install pulseaudio pulseaudio-utils; .ci/run does)"
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as e:
        return f"sounddevice cannot be used ({e}; pip install sounddevice, apt-get install libportaudio2)"
    if not os.path.exists("/usr/share/alsa/alsa.conf.d/pulse.conf"):
        return "ALSA's pulse plugin is missing (apt-get install libasound2-plugins)"
    return None


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A PulseAudio server in a private runtime directory; yields the clients' environment."""
    problem = pulse_problem()
    if problem:
        pytest.skip(problem)
    runtime = tmp_path_factory.mktemp("pulse")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
           "HOME": str(runtime), "PULSE_SERVER": f"unix:{runtime}/pulse/native"}
    env.pop("DISPLAY", None)
    server = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit=no", "--log-target=stderr",
         "--load=module-native-protocol-unix auth-anonymous=1",
         f"--load=module-null-sink sink_name={SINK} rate=16000 channels=1 format=s16le"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"pulseaudio did not start: {server.communicate()[1][-2000:]}")
        time.sleep(0.1)
    for command in (["set-default-sink", SINK], ["set-default-source", f"{SINK}.monitor"]):
        subprocess.run(["pactl", *command], env=env, check=True)
    yield env
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def capturing(env) -> bool:
    listed = subprocess.run(["pactl", "list", "short", "source-outputs"], env=env, capture_output=True, text=True)
    return bool(listed.stdout.strip())


def longest_quiet_run(x: np.ndarray, window: int = 160, threshold: float = 0.002) -> int:
    """Most consecutive quiet windows (as SilenceGate sees them) at any window alignment."""
    power = np.convolve(x.astype(np.float64) ** 2, np.ones(window), "valid") / window
    quiet = np.sqrt(power) <= threshold
    best = 0
    for phase in range(window):
        run = 0
        for q in quiet[phase::window]:
            run = run + 1 if q else 0
            best = max(best, run)
    return best


def test_from_mic_through_pulseaudio_equals_the_cli(pulse, tiny_dir, tmp_path):
    sample = shared_audio(SAMPLE)
    reference, rate = sf.read(sample, dtype="float32")
    assert rate == 16000 and reference.ndim == 1
    assert longest_quiet_run(reference) < 50, "SAMPLE has a pause the silence gate would skip"
    record = tmp_path / "heard.wav"
    mic = subprocess.Popen([sys.executable, "-m", "voxnp", "--from-mic", "--record", str(record), "-I", "0.5",
                            "--model", str(tiny_dir), "--silent"],
                           env=pulse, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not capturing(pulse):
            assert mic.poll() is None, mic.communicate()
            assert time.monotonic() < deadline, "voxnp never opened the microphone"
            time.sleep(0.05)
        player = subprocess.Popen(["paplay", str(sample)], env=pulse)
        time.sleep(3.5)                                    # SAMPLE is 5 s: stop while it plays
        mic.send_signal(signal.SIGINT)
        stdout, stderr = mic.communicate(timeout=120)
        player.wait(timeout=30)
    finally:
        if mic.poll() is None:
            mic.kill()
    assert mic.returncode == 0, stderr
    assert "interrupted; finishing what arrived" in stderr and "Traceback" not in stderr
    heard, rate = sf.read(record, dtype="float32")
    assert rate == 16000 and len(heard) >= 16000, len(heard)
    # the capture holds an exact slice of SAMPLE (whatever silence came before it)
    start = int(np.argmax(np.abs(heard) > 0))
    probe = heard[start:start + 1600]
    offsets = [k for k in range(len(reference) - len(probe)) if np.array_equal(reference[k:k + len(probe)], probe)]
    assert offsets, "the audio voxnp heard is not SAMPLE"
    body = heard[start:]
    assert np.array_equal(body, reference[offsets[0]:offsets[0] + len(body)])
    assert longest_quiet_run(heard) < 60, "the capture had a silence the gate skipped; compare would not hold"
    expected = subprocess.run([sys.executable, "-m", "voxnp", str(record), "--model", str(tiny_dir), "--silent"],
                              capture_output=True, text=True, timeout=300)
    assert expected.returncode == 0, expected.stderr
    assert stdout.strip() and stdout.strip() == expected.stdout.strip()
    assert stdout.endswith("\n")                           # the transcript was flushed


def test_record_keeps_the_live_input_as_read(tiny_dir, tmp_path):
    """--record with --stdin: the WAV holds exactly the samples transcribed; alone it is an error."""
    from voxnp.audio import load_audio

    sample = shared_audio(SAMPLE)
    record = tmp_path / "stdin.wav"
    with open(sample, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "voxnp", "--stdin", "--record", str(record), "--model", str(tiny_dir),
                            "--silent"], stdin=f, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(load_audio(record), load_audio(sample))
    r = subprocess.run([sys.executable, "-m", "voxnp", str(sample), "--record", str(record), "--model", str(tiny_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--record needs --stdin or --from-mic" in r.stderr and "Traceback" not in r.stderr
