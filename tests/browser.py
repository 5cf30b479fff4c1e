"""A real headless Chromium driven over the DevTools protocol, for the pages' tests.

Debian's `chromium` (installed by .ci/run, or `make browser`) is started with
`--remote-debugging-pipe`: commands go in as NUL-terminated JSON on its fd 3, answers and
events come out on its fd 4. No websocket, no driver download, no Python dependency. The page
runs offline: the network is emulated as disconnected, every request the page makes is
recorded (`requests`), and the tests assert that only file:// addresses were asked for.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    # Nothing may leave the machine even if the page tried: no resolver, no proxy route.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--remote-debugging-pipe",
)
TIMEOUT = 60.0


def chromium() -> str:
    """Return the path of Chromium, or fail the test saying how to install it."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "Chromium is not installed: the browser tests need it and never skip. Install Debian's "
        "package (`sudo apt-get install chromium`, what .ci/run does), or run `make test` as "
        "root, which installs it."
    )


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process and one page (tab) in it."""

    def __init__(self, binary: str, profile: Path) -> None:
        pipes = os.pipe() + os.pipe()
        # Above fd 9, so the shell's redirections to fd 3 and 4 cannot overwrite each other.
        to_child_r, self._to_child, self._from_child, from_child_w = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in pipes
        )
        for fd in pipes:
            os.close(fd)
        self.process = subprocess.Popen(
            [  # bash: dash cannot redirect file descriptors above 9
                "bash",
                "-c",
                f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-',
                "bash",
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self._lock = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.page(f"{domain}.enable")
        self.page(
            "Network.emulateNetworkConditions",
            offline=True,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                block = os.read(self._from_child, 1 << 16)
            except OSError:
                block = b""
            if not block:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buffer += block
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._lock.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; raise CdpError on an error answer."""
        with self._lock:
            self._next += 1
            number = self._next
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(
                lambda: number in self._answers or self._closed, timeout=TIMEOUT
            ):
                raise CdpError(f"{method}: no answer in {TIMEOUT:g} s")
            if number not in self._answers:
                raise CdpError(f"{method}: Chromium exited")
            answer = self._answers.pop(number)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command to the page's session."""
        return self.call(method, self.session, **params)

    def wait_event(self, method: str, start: int) -> dict[str, Any]:
        """Return the first event `method` at or after index `start` of `events`."""
        with self._lock:
            found: list[dict[str, Any]] = []

            def seen() -> bool:
                found[:] = [e for e in self.events[start:] if e.get("method") == method]
                return bool(found) or self._closed

            if not self._lock.wait_for(seen, timeout=TIMEOUT) or not found:
                raise CdpError(f"no {method} event in {TIMEOUT:g} s")
            return found[0]

    def open(self, path: Path, *, bypass_csp: bool = False) -> None:
        """Load a local file and wait until its load event fired."""
        self.page("Page.setBypassCSP", enabled=bypass_csp)
        with self._lock:
            start = len(self.events)
        self.page("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired", start)

    def evaluate(self, expression: str) -> Any:
        """Return the value of a JavaScript expression (DevTools runs it despite the CSP)."""
        result = self.page(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """Return a PNG of the whole page."""
        data = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        return base64.b64decode(data["data"])

    def requests(self) -> list[str]:
        """Return every address the page asked for so far."""
        with self._lock:
            return [
                e["params"]["request"]["url"]
                for e in self.events
                if e.get("method") == "Network.requestWillBeSent"
            ]

    def event_texts(self, method: str) -> list[str]:
        with self._lock:
            return [json.dumps(e["params"]) for e in self.events if e.get("method") == method]

    def close(self) -> None:
        with suppress(CdpError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        self._reader.join(timeout=5)
        os.close(self._from_child)


@contextmanager
def browser() -> Iterator[Browser]:
    """Yield a fresh headless Chromium with its own empty profile; closed afterwards."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="cv-dsr-chromium-") as profile:
        b = Browser(binary, Path(profile))
        try:
            yield b
        finally:
            b.close()


# --- reading the screenshot (PNG, 8-bit RGB or RGBA, as Chromium writes it) ----------------


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """Return (width, height, bytes per pixel, raw pixel rows without filter bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        filter_type, row = line[0], bytearray(line[1:])
        for x in range(stride):
            a = row[x - bpp] if x >= bpp else 0
            b = previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if filter_type == 1:
                row[x] = (row[x] + a) & 0xFF
            elif filter_type == 2:
                row[x] = (row[x] + b) & 0xFF
            elif filter_type == 3:
                row[x] = (row[x] + (a + b) // 2) & 0xFF
            elif filter_type == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (row[x] + pred) & 0xFF
        out += row
        previous = row
    return width, height, bpp, bytes(out)


def colours(data: bytes, step: int = 7) -> dict[tuple[int, ...], int]:
    """Return how often each colour appears in a sample of the PNG's pixels."""
    width, height, bpp, pixels = png_pixels(data)
    seen: dict[tuple[int, ...], int] = {}
    for i in range(0, width * height, step):
        colour = tuple(pixels[i * bpp : i * bpp + 3])
        seen[colour] = seen.get(colour, 0) + 1
    return seen
