"""Headless Chromium driven over its DevTools protocol with the standard library only, so that
docs/screenshots.py can use a page as a person would (click, type, press a key) before taking a
picture. Chromium reads commands on its fd 3 and answers on fd 4 (`--remote-debugging-pipe`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path

# Every host but 127.0.0.1 resolves to nothing: the pages load no outside resources, and no
# request hangs on an unreachable host.
HOST_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (its fds 3 and 4: one JSON
    message per NUL-terminated chunk), with one page of `window` (width, height) pixels."""

    def __init__(self, executable: str, window: tuple[int, int]) -> None:
        to_browser, from_browser = os.pipe(), os.pipe()

        def attach_pipe() -> None:  # in the child: read commands on fd 3, write answers on fd 4
            ends = [
                fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
                for fd in (to_browser[0], from_browser[1])
            ]
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        width, height = window
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={width},{height}", f"--host-resolver-rules={HOST_RULES}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=attach_pipe, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser[0])
        os.close(from_browser[1])
        self.command_fd, self.answer_fd = to_browser[1], from_browser[0]
        self.pending, self.last_id, self.session = b"", 0, ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def call(self, method: str, timeout_s: float = 60, **params) -> dict:
        """Send one DevTools command (to the page once attached) and return its result."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.command_fd, json.dumps(message).encode() + b"\0")
        while True:  # events arrive in between; skip them
            answer = self._next_message(timeout_s)
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise RuntimeError(f"chromium: {method}: {answer['error']}")
                return answer.get("result", {})

    def _next_message(self, timeout_s: float) -> dict:
        while b"\0" not in self.pending:
            if not select.select([self.answer_fd], [], [], timeout_s)[0]:
                raise RuntimeError(f"chromium did not answer within {timeout_s} s")
            chunk = os.read(self.answer_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.pending += chunk
        message, _, self.pending = self.pending.partition(b"\0")
        return json.loads(message)

    def open(self, url: str) -> None:
        """Load `url` afresh (from a blank page, so a single-page app keeps no earlier state)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 120) -> None:
        """Poll until `expression` is truthy, then until the page has fetched nothing for 2 s."""
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"!!({expression})"):  # a boolean: elements do not serialize
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.5)
        count, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2 and time.monotonic() < deadline:
            now = self.evaluate("performance.getEntriesByType('resource').length")
            if now != count:
                count, quiet_since = now, time.monotonic()
            time.sleep(0.25)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str, key_code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=key_code)  # fmt: skip

    def screenshot(self, path: Path) -> None:
        path.write_bytes(
            base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        )
        print(f"wrote {path}")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already gone
            self.call("Browser.close", timeout_s=10)
        os.close(self.command_fd)
        os.close(self.answer_fd)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
