"""A headless Chromium driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``:
commands on its fd 3, answers on its fd 4, each a JSON message ended by a NUL byte), the way
Playwright talks to it, without Playwright's bundled Node driver or Selenium's chromedriver:
the tests need a page opened, scripts evaluated and screenshots taken, which is a handful of
protocol commands over the standard library."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

HIGH_FD = 100  # the pipes' ends are moved above the fds a test process uses before becoming 3 and 4


def executable() -> str | None:
    """The system's Chromium (Debian's ``chromium`` package), or None."""
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


class BrowserError(Exception):
    pass


class Chromium:
    """One headless Chromium with one page (``session``); ``close`` ends it."""

    def __init__(self, binary: str, profile: Path, width: int = 1200, height: int = 1000):
        commands_in, commands_out = os.pipe()
        answers_in, answers_out = os.pipe()
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD, HIGH_FD) for fd in (commands_in, answers_out)]
        os.close(commands_in)
        os.close(answers_out)

        def as_3_and_4() -> None:  # in the child: dup2 clears close-on-exec on the copies
            os.dup2(theirs[0], 3)
            os.dup2(theirs[1], 4)

        flags = ["--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]
        if os.geteuid() == 0:  # Chromium's sandbox refuses root
            flags.append("--no-sandbox")
        profile.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        with open(profile / "stderr.txt", "wb") as stderr:  # a file: a pipe nobody reads would fill and stall it
            self.process = subprocess.Popen(
                [binary, *flags, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(3, 4),
                preexec_fn=as_3_and_4,
            )
        for fd in theirs:
            os.close(fd)
        self.writer = os.fdopen(commands_out, "wb", buffering=0)
        self.reader = os.fdopen(answers_in, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride", session=True, width=width, height=height, deviceScaleFactor=1, mobile=False
        )

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (the events meanwhile are dropped)."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.writer.write(json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return dict(answer["result"])

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            chunk = self.reader.read(1 << 16)
            if not chunk:
                raise BrowserError(f"chromium ended: {(self.profile / 'stderr.txt').read_text(errors='replace')[-2000:]}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.until("document.readyState === 'complete' && location.href !== 'about:blank'", f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (a promise awaited), as JSON."""
        found = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in found:
            raise BrowserError(f"{expression}: {found['exceptionDetails']}")
        return found["result"].get("value")

    def until(self, expression: str, what: str, limit_s: float = 60.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + limit_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {limit_s:g} s for {what}")
            time.sleep(0.05)
        return value

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def close(self) -> None:
        """Ask it to close (not waiting for an answer it may not send), then wait for its end."""
        self.writer.write(json.dumps({"id": 0, "method": "Browser.close", "params": {}}).encode() + b"\0")
        self.writer.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.close()
