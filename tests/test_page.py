"""The page `voxnp serve` serves at `/`, in a real browser: Debian's headless Chromium driven
by selenium (chromedriver) against a real `voxnp serve` on the tiny checkpoint.

Live: Chromium's fake microphone plays SAMPLE (looped, from a random point, at the
browser's capture rate); the page resamples it to 16 kHz PCM16 in its AudioWorklet and
streams it over WS /v1/realtime. Which audio that is cannot be known in advance, so the
page's own "Audio sent (WAV)" download is the record: the test checks that it is SAMPLE
(correlation with the looped file: the resampler works) and that the transcript the page
shows equals `voxnp SENT.wav --delay D` character for character. That comparison is
exact: the realtime path gives the offline tokens for the same samples, and the websocket's
URL (the browser's network log) shows the delay the page asked for.

File: the page uploads SAMPLE (under a name that is HTML), streams the text (SSE), and its
.srt download equals `voxnp SAMPLE --format srt`.

Also: no request leaves the server's origin (the browser's network log), the page is
served without the key while the API refuses requests without it, errors (wrong key,
microphone refused, busy server, a rejected append) show as one line, and screenshots of each state are
written under the test's temp dir (VOXNP_PAGE_SCREENSHOTS=DIR copies them there: the
README's picture is docs/page.png: file-done.png, the live and the file test's results).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_audio
from test_server import Served, request, start_served, stop_served

pytest.importorskip("starlette")
pytest.importorskip("websockets")

SAMPLE = "5s_dont_worry_about_him.wav"
KEY = "page-test-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
STATIC = Path(__file__).parent.parent / "voxnp" / "server" / "static"
PAGE_FILES = ("index.html", "page.css", "page.js", "worklet.js", "icon.svg")


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory) -> Served:
    """`voxnp serve --api-key KEY` (the page must work with a key)."""
    served = start_served(tiny_dir, tmp_path_factory.mktemp("page") / "server.log", "--api-key", KEY)
    yield served
    stop_served(served)


@pytest.fixture(scope="module")
def strict(tiny_dir, tmp_path_factory) -> Served:
    """A server with one session and a backlog too small for any append: busy and rejected."""
    served = start_served(tiny_dir, tmp_path_factory.mktemp("strict") / "server.log",
                          "--max-sessions", "1", "--max-upload-mb", "0.001")
    yield served
    stop_served(served)


def cli(tiny_dir, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "voxnp", *map(str, args), "--model", str(tiny_dir), "--silent"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- without a browser -------------------------------------------------------

def test_page_is_served_without_key_with_a_strict_csp(served):
    status, headers, body = request(served, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "http" not in csp and "*" not in csp and "unsafe" not in csp
    assert b'src="/static/page.js"' in body
    for name in PAGE_FILES:
        status, headers, _ = request(served, "GET", f"/static/{name}")
        assert status == 200 and headers["content-security-policy"] == csp, name
    assert request(served, "GET", "/static/../app.py")[0] == 404
    assert request(served, "GET", "/static/nothing.js")[0] == 404
    assert request(served, "GET", "/v1/models")[0] == 401                     # the API still needs the key
    assert request(served, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 200


def test_page_files_name_no_other_origin_and_write_no_html():
    for name in PAGE_FILES:
        text = (STATIC / name).read_text()
        urls = [w for w in text.split() if "://" in w and "www.w3.org/2000/svg" not in w]
        assert not urls, (name, urls)
    script = (STATIC / "page.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_page_files_are_package_data(tmp_path):
    """What `pip install .` installs: setup.py's build_py copies the page with the package."""
    root = Path(__file__).parent.parent
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in PAGE_FILES:
        assert (tmp_path / "voxnp" / "server" / "static" / name).read_bytes() == (STATIC / name).read_bytes()


# -- in Chromium ---------------------------------------------------------------

def chromium_problem() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install \".[test]\")"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install chromium chromium-driver; .ci/run does)"
    return None


@pytest.fixture(scope="module")
def fake_mic(tmp_path_factory) -> Path:
    """SAMPLE as Chromium's fake microphone plays it (a WAV file)."""
    path = tmp_path_factory.mktemp("mic") / "sample.wav"
    shutil.copy(shared_audio(SAMPLE), path)
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def start_chromium(profile: Path, downloads: Path, fake_mic: Path, allow_mic: bool = True):
    """Headless Debian Chromium under chromedriver; the microphone is SAMPLE, and allowed
    without asking (allow_mic) or, with no one to answer the prompt, refused."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_mic}", f"--user-data-dir={profile}",
                 "--window-size=1280,900") + (("--use-fake-ui-for-media-stream",) if allow_mic else ()):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    driver.requests = []
    return driver


def requested_urls(driver) -> list[str]:
    """Every URL the browser requested or opened a websocket to so far (the performance log
    is drained on each read, so it is kept on the driver)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            params = message["params"]
            driver.requests.append(params["request"]["url"] if "request" in params else params["url"])
    return list(driver.requests)


@pytest.fixture(scope="module")
def browser(fake_mic, tmp_path_factory):
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    driver = start_chromium(tmp_path_factory.mktemp("profile"), tmp_path_factory.mktemp("downloads"), fake_mic)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60, what: str = ""):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.1)
    error = driver.execute_script("return document.getElementById('error').textContent;")
    pytest.fail(f"timed out waiting for {what or script} (page error line: {error!r})")


def screenshot(driver, shots: Path, name: str) -> None:
    driver.save_screenshot(str(shots / f"{name}.png"))
    copy_to = os.environ.get("VOXNP_PAGE_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / f"{name}.png", Path(copy_to) / f"{name}.png")


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent;")


def error_line(driver) -> str:
    return driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent;")


def open_page(driver, url: str, key: str = "", delay: int | None = None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    driver.execute_script("sessionStorage.clear();")
    driver.get(url + "/")
    wait_for(driver, "document.getElementById('health').textContent === 'ready'", 20, "the health line")
    if key:
        driver.find_element(By.ID, "key").send_keys(key)
    if delay is not None:
        Select(driver.find_element(By.ID, "delay")).select_by_value(str(delay))


def downloaded(driver, name: str, timeout: float = 60) -> bytes:
    """The file a click saved in the browser's download directory."""
    target = driver.downloads / name
    deadline = time.monotonic() + timeout
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), sorted(p.name for p in driver.downloads.iterdir())
    data = target.read_bytes()
    target.unlink()
    return data


def best_correlation(sent: np.ndarray, reference: np.ndarray) -> float:
    """Largest normalised correlation of a 1 s excerpt of `sent` with the looped reference."""
    excerpt = sent[8000:24000]
    looped = np.concatenate([reference, reference])
    n = len(looped) + len(excerpt)
    spectrum = np.fft.rfft(looped, n) * np.conj(np.fft.rfft(excerpt, n))
    corr = np.fft.irfft(spectrum, n)[: len(reference)]
    energy = np.sqrt(np.convolve(looped ** 2, np.ones(len(excerpt)), "valid")[: len(reference)])
    return float(np.max(corr / (np.linalg.norm(excerpt) * np.maximum(energy, 1e-9))))


def test_live_microphone_equals_the_cli_on_the_audio_sent(browser, served, tiny_dir, shots, fake_mic):
    from selenium.webdriver.common.by import By

    delay = 960
    browser.set_window_size(1280, 900)
    open_page(browser, served.http, key=KEY, delay=delay)
    screenshot(browser, shots, "idle")
    browser.find_element(By.ID, "mic").click()
    wait_for(browser, "document.getElementById('mic').dataset.state === 'live'", 30, "the live state")
    wait_for(browser, "/([3-9]|\\d\\d)\\.\\d s of audio sent/.test(document.getElementById('live-info').textContent)",
             30, "3 s of audio sent")
    wait_for(browser, "document.getElementById('level').value > 0", 10, "the level meter to move")
    screenshot(browser, shots, "live")
    browser.find_element(By.ID, "mic").click()                          # stop: final commit
    wait_for(browser, "document.getElementById('live-info').textContent.endsWith('done')", 60, "transcription.done")
    assert error_line(browser) == ""
    shown = text_of(browser, "live-text")
    screenshot(browser, shots, "live-done")

    browser.find_element(By.ID, "live-wav").click()
    wav = downloaded(browser, "voxnp-live.wav")
    sent, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 16000 and sent.ndim == 1 and len(sent) >= 3 * 16000
    reference, _ = sf.read(fake_mic, dtype="float32")
    assert best_correlation(sent, reference) > 0.9, "the audio sent is not the fake microphone's file"
    path = shots.parent / "sent.wav"
    path.write_bytes(wav)
    expected = cli(tiny_dir, path, "--delay", delay).strip()
    assert expected and shown.strip() == expected
    # the setting reached the server (the tiny model's text may not change with the delay)
    sockets = [u for u in requested_urls(browser) if "/v1/realtime" in u]
    assert sockets and sockets[-1].endswith(f"?delay_ms={delay}"), sockets


def test_file_streams_and_downloads_srt_equal_to_the_cli(browser, served, tiny_dir, shots, tmp_path):
    from selenium.webdriver.common.by import By

    name = "<img src=x onerror=alert(1)>.wav"                                # escaped, not markup
    upload = tmp_path / name
    shutil.copy(shared_audio(SAMPLE), upload)
    if browser.current_url != served.http + "/":       # else as the live test left it (the README's picture)
        open_page(browser, served.http, key=KEY)
    delay = browser.execute_script("return document.getElementById('delay').value;")
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    info = wait_for(browser, "/real time/.test(document.getElementById('file-info').textContent) && "
                    "document.getElementById('file-info').textContent", 120, "the file's transcript")
    assert info.startswith(name) and "5.0 s of audio" in info, info
    assert browser.execute_script("return document.querySelectorAll('img').length;") == 0
    assert text_of(browser, "file-text") == cli(tiny_dir, upload, "--delay", delay).strip()
    assert error_line(browser) == ""
    screenshot(browser, shots, "file-done")

    browser.find_element(By.CSS_SELECTOR, "#downloads [data-format=srt]").click()
    srt = downloaded(browser, "_img src=x onerror=alert(1)_.srt").decode()       # the browser renames it
    assert srt == cli(tiny_dir, upload, "--format", "srt", "--delay", delay)
    assert "POST /v1/audio/transcriptions 200" in served.log.read_text()
    assert "srt audio 5.0 s (recent)" in served.log.read_text()        # not transcribed again


def test_phone_sized_screen_and_keyboard(browser, served, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(390, 844)
    open_page(browser, served.http)
    width = browser.execute_script("return document.documentElement.scrollWidth;")
    inner = browser.execute_script("return window.innerWidth;")
    assert width <= inner, "the page scrolls sideways on a phone"
    screenshot(browser, shots, "phone")
    # Tab from the top reaches the microphone, the file picker, the settings and downloads in order
    browser.find_element(By.TAG_NAME, "h1").click()
    order = []
    for _ in range(12):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        order.append(browser.execute_script("return document.activeElement.id || document.activeElement.tagName;"))
    assert order.index("mic") < order.index("file-input") < order.index("delay") < order.index("key"), order
    browser.set_window_size(1280, 900)


def test_no_request_leaves_the_origin(browser, served):
    """Every request of the tests above went to the server."""
    requests = requested_urls(browser)
    assert requests, "the performance log recorded nothing"
    host = served.http.split("://", 1)[1]
    network = [u for u in requests if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]   # not chrome://
    outside = [u for u in network if not u.split("://", 1)[1].startswith(host + "/")]
    assert not outside, outside
    assert any(u.startswith(f"ws://{host}/v1/realtime") for u in requests)


def test_errors_show_as_one_line(browser, served, strict, shots):
    from selenium.webdriver.common.by import By
    import websockets

    def run_live_until_error(url, key=""):
        open_page(browser, url, key=key)
        browser.find_element(By.ID, "mic").click()
        line = wait_for(browser, "!document.getElementById('error').hidden && document.getElementById('error').textContent",
                        30, "an error line")
        wait_for(browser, "document.getElementById('mic').dataset.state !== 'connecting'", 30)
        if browser.execute_script("return document.getElementById('mic').dataset.state;") == "live":
            browser.find_element(By.ID, "mic").click()
        wait_for(browser, "document.getElementById('mic').dataset.state === 'idle'", 30, "the idle state")
        assert "\n" not in line
        return line

    assert "API key" in run_live_until_error(served.http, key="wrong")
    screenshot(browser, shots, "error-key")

    async def busy():
        async with websockets.connect(strict.ws):
            return await asyncio.to_thread(run_live_until_error, strict.http)

    assert "busy" in asyncio.run(busy())
    # every append is over this server's backlog limit: the server's error event is shown
    assert "too much audio is waiting" in run_live_until_error(strict.http)
    screenshot(browser, shots, "error-rejected")


def test_refused_microphone_is_one_clear_line(served, fake_mic, tmp_path, shots):
    """Without the fake permission prompt nobody allows the microphone: getUserMedia fails."""
    problem = chromium_problem()
    if problem:
        pytest.skip(problem)
    from selenium.webdriver.common.by import By

    refusing = start_chromium(tmp_path / "profile", tmp_path / "downloads", fake_mic, allow_mic=False)
    try:
        open_page(refusing, served.http, key=KEY)
        refusing.find_element(By.ID, "mic").click()
        line = wait_for(refusing, "!document.getElementById('error').hidden && "
                        "document.getElementById('error').textContent", 30, "an error line")
        assert "microphone was refused" in line and "\n" not in line, line
        assert refusing.execute_script("return document.getElementById('mic').dataset.state;") == "idle"
        screenshot(refusing, shots, "error-microphone")
    finally:
        refusing.quit()
