"""The Slack emulator's HTTP server: one threaded server whose handler reads a request and
hands it on, GET /socket/... to Socket Mode (socket_mode.py) and every other request to
`SlackEmulator._dispatch` (webapi.py), which answers with a `Reply`.

It also holds what is HTTP rather than Slack: chunked bodies, a request dropped on purpose
(`SlackEmulator.drop_rate`), and an emulator bug answered as HTTP 500
`emulator_internal_error` with its traceback kept in `internal_errors` for the test to see.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from emulators.slack.socket_mode import upgrade

if TYPE_CHECKING:
    from emulators.slack.webapi import SlackEmulator

__all__ = ["Handler", "Reply", "Server", "json_reply"]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, extra headers and the body's content type."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json; charset=utf-8"


def json_reply(status: int, data: Mapping[str, Any], *headers: tuple[str, str]) -> Reply:
    """Return a JSON answer."""
    return Reply(status, json.dumps(data).encode("utf-8"), headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) makes bursts of parallel clients wait a second for a TCP retry.
    request_queue_size = 128
    emulator: SlackEmulator


class Handler(BaseHTTPRequestHandler):
    server: Server
    # HTTP/1.0: one request per connection, so stop() leaves no idle keep-alive sockets.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path.startswith("/socket/"):
            upgrade(self, self.server.emulator.socket_mode)
        else:
            self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, verb: str) -> None:
        if self.server.emulator._drops():
            self.close_connection = True
            return
        try:
            body = self._read_body()
        except ValueError:
            reply = Reply(400, b"bad request body", content_type="text/plain")
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                reply = self.server.emulator._dispatch(verb, self.path, headers, body)
            except Exception:
                # An emulator bug must show up in the test, not as a dropped connection.
                self.server.emulator.internal_errors.append(traceback.format_exc())
                reply = json_reply(500, {"ok": False, "error": "emulator_internal_error"})
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: tests assert on `calls`, not on stderr.
        pass
