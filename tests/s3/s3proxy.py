"""A fault-injecting HTTP proxy between the job and the S3 server, and the byte counter the cache tests read.

Every request is forwarded unchanged (the Host header included, so request signatures still match) to one
upstream server. A `Fault` matching a request replaces the upstream's answer: an S3 error response with a
status and code (503 SlowDown, 403 AccessDenied, 404 NoSuchKey), or, with `status=None`, a TCP reset: a GET
gets the upstream's response cut off halfway through its body, any other request is dropped before it
reaches the upstream (an upload that never lands). Faults fire `times` times (None: for ever). GET
response bytes are counted per object path.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
_CHUNK = 1 << 16


@dataclass
class Fault:
    """Answer `method` requests whose object path matches `path` (a regex, searched) with `status` and an
    S3 error `code`, or with a connection reset when `status` is None (see the module docstring)."""

    method: str
    path: str
    status: int | None = 503
    code: str = "SlowDown"
    times: int | None = 1

    def message(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>injected by the test proxy</Message></Error>"
        ).encode()


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of `upstream` ("host:port"); `endpoint` is its URL."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.fired: Counter[str] = Counter()
        self.get_bytes: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def reset(self) -> None:
        """No faults, counters at zero."""
        with self._lock:
            self.faults.clear()
            self.fired.clear()
            self.get_bytes.clear()
            self.requests.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str, path: str) -> Fault | None:
        """The first live fault for this request, used up by one."""
        with self._lock:
            self.requests[method, path] += 1
            for fault in self.faults:
                if fault.method == method and re.search(fault.path, path) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    self.fired[fault.code if fault.status else "reset"] += 1
                    return fault
        return None

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.get_bytes[path] += n


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _relay(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            body = self._body()
            fault = proxy._take(self.command, path)
            if fault is not None and fault.status is not None:
                self._error(fault)
                return
            if fault is not None and self.command != "GET":  # the request never reaches the server
                self._abort()
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data_length = response.getheader("Content-Length")
                data = None if data_length is not None else response.read()
                size = int(data_length) if data is None else len(data)
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                cut = size // 2 if fault is not None else None
                while sent < size:
                    chunk = data[sent : sent + _CHUNK] if data is not None else response.read(_CHUNK)
                    if not chunk:
                        break
                    if cut is not None and sent + len(chunk) > cut:
                        self._send(path, chunk[: cut - sent])
                        self._abort()
                        return
                    self._send(path, chunk)
                    sent += len(chunk)
            finally:
                upstream.close()

        def _body(self) -> bytes | None:
            """The request body, de-chunked (forwarded with a Content-Length)."""
            if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)

        def _send(self, path: str, chunk: bytes) -> None:
            self.wfile.write(chunk)
            if self.command == "GET":
                proxy._count(path, len(chunk))

        def _error(self, fault: Fault) -> None:
            body = b"" if self.command == "HEAD" else fault.message()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _abort(self) -> None:
            """Reset the connection (SO_LINGER 0) instead of closing it cleanly."""
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler
