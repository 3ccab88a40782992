"""Headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

`--remote-debugging-pipe` makes Chromium read commands from fd 3 and write replies and events to fd 4,
each a JSON message ending in NUL: no port, no websocket client. bash maps our pipe ends onto 3 and 4
(Popen cannot), from fds >= 10 so that neither mapping overwrites the other.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# What the environment notes say headless Chromium needs here: no sandbox as root, no GPU, and no
# background connections (this machine has no network; they would only add errors and requests).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
TIMEOUT_S = 60.0
WIDTH = 1280


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    """What a page did while it loaded: console messages, exceptions, log entries, request URLs."""

    console: list[dict] = field(default_factory=list)
    exceptions: list[dict] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        return (
            [
                f"console.{m['type']}: {m.get('args')}"
                for m in self.console
                if m["type"] in ("error", "assert", "warning")
            ]
            + [f"exception: {e['exceptionDetails'].get('text')}" for e in self.exceptions]
            + [
                f"log {e['entry']['level']}: {e['entry'].get('text')}"
                for e in self.log
                if e["entry"]["level"] in ("error", "warning")
            ]
        )


class Browser:
    """One headless Chromium with one page; `open` loads a URL and records what it did."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        script = f'exec "$@" 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-'
        command = [*FLAGS, f"--user-data-dir={self._profile}", f"--window-size={WIDTH},900"]
        self._process = subprocess.Popen(
            ["bash", "-c", script, "bash", executable, *command, "--remote-debugging-pipe", "about:blank"],
            pass_fds=high,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in (to_browser_r, from_browser_w, *high):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
            self.page(f"{domain}.enable")
        self.page(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False
        )

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ------------------------------------------------------------------------------------

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it start?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self._events.append(reply)

    def page(self, method: str, **params: Any) -> dict:
        return self.call(method, self._session, **params)

    def _wait_for(self, method: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method for e in self._events):
            self._events.append(self._receive(deadline))

    # -- what the tests use --------------------------------------------------------------------------------

    def open(self, url: str) -> PageLoad:
        """Load `url`, wait for its load event (and a moment for late messages), return what it did."""
        self._events.clear()
        self.page("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired")
        self.page("Runtime.evaluate", expression="1")  # a round trip: events queued before it arrive first
        load = PageLoad()
        for event in self._events:
            params = event.get("params", {})
            match event.get("method"):
                case "Runtime.consoleAPICalled":
                    load.console.append(params)
                case "Runtime.exceptionThrown":
                    load.exceptions.append(params)
                case "Log.entryAdded":
                    load.log.append(params)
                case "Network.requestWillBeSent":
                    load.requests.append(params["request"]["url"])
        return load

    def screenshot(self, clip: dict | None = None) -> np.ndarray:
        """RGB pixels of the page: the part in `clip` (x, y, width, height), else the whole page."""
        if clip is None:
            size = self.page("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
        shot = self.page(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip={**clip, "scale": 1}
        )
        image = cv2.imdecode(np.frombuffer(base64.b64decode(shot["data"]), np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def boxes(self, selector: str) -> list[tuple[str, dict]]:
        """(id attribute, clip) of each element matching `selector`, from its border box."""
        root = self.page("DOM.getDocument", depth=0)["root"]["nodeId"]
        out = []
        for node in self.page("DOM.querySelectorAll", nodeId=root, selector=selector)["nodeIds"]:
            quad = self.page("DOM.getBoxModel", nodeId=node)["model"]["border"]
            xs, ys = quad[0::2], quad[1::2]
            attributes = self.page("DOM.getAttributes", nodeId=node)["attributes"]
            ident = dict(zip(attributes[0::2], attributes[1::2])).get("id", "")
            clip = {"x": min(xs), "y": min(ys), "width": max(xs) - min(xs), "height": max(ys) - min(ys)}
            out.append((ident, clip))
        return out


def save_png(image: np.ndarray, path: str | Path) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
