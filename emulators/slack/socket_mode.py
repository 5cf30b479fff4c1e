"""Socket Mode as Slack serves it: single-use `ws://` URLs from apps.connections.open, and a
WebSocket (RFC 6455: text frames, ping/pong, close; client frames masked) that greets with
`{"type": "hello"}`, carries envelopes to the app and brings its acks back.

`SocketMode` is the app's side of it in the emulator: tests push envelopes with `send()` and
read the client's acks with `ack()`. `upgrade()` turns one HTTP request of the emulator's
server into a WebSocket connection. Not pure: a connection is served on the HTTP server's
thread until the client or `close_all()` closes it; the state is guarded by one condition.

Evidence: api.slack.com/apis/socket-mode (hello, envelope_id, accepts_response_payload, the
ack with an optional payload); the hello's debug_info fields are copied in shape from Slack's
documentation example, their values are made up.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import secrets
import socket
import struct
import threading
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from emulators.slack.records import JsonObject

__all__ = ["SocketLink", "SocketMode", "upgrade", "websocket_accept"]

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
MAX_FRAME = 16 * 1024 * 1024

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


def websocket_accept(key: str) -> str:
    """Return the Sec-WebSocket-Accept answering a Sec-WebSocket-Key."""
    digest = hashlib.sha1((key.strip() + WEBSOCKET_GUID).encode("ascii"), usedforsecurity=False)
    return base64.b64encode(digest.digest()).decode("ascii")


def _frame(opcode: int, data: bytes) -> bytes:
    """Return one unmasked, final frame (a server never masks)."""
    size = len(data)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + data


def _read_exact(stream: io.BufferedIOBase, size: int) -> bytes | None:
    data = stream.read(size) if size else b""
    return data if len(data) == size else None


def _read_frame(stream: io.BufferedIOBase) -> tuple[bool, int, bytes] | None:
    """Return (fin, opcode, unmasked data) of a client frame; None at EOF.

    Raises ValueError for a frame a client must not send (unmasked, or absurdly large).
    """
    head = _read_exact(stream, 2)
    if head is None:
        return None
    fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
    masked, size = bool(head[1] & 0x80), head[1] & 0x7F
    if size == 126:
        extended = _read_exact(stream, 2)
        if extended is None:
            return None
        size = struct.unpack("!H", extended)[0]
    elif size == 127:
        extended = _read_exact(stream, 8)
        if extended is None:
            return None
        size = struct.unpack("!Q", extended)[0]
    if not masked:
        raise ValueError("unmasked client frame")  # RFC 6455, 5.1
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    mask = _read_exact(stream, 4)
    data = _read_exact(stream, size)
    if mask is None or data is None:
        return None
    return fin, opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class SocketLink:
    """One connected Socket Mode client: writes are serialized, close is idempotent."""

    def __init__(self, ticket: str, conn: socket.socket) -> None:
        self.ticket = ticket
        self.conn = conn
        self.closed = False
        self._send_lock = threading.Lock()

    def send(self, opcode: int, data: bytes) -> None:
        with self._send_lock:
            if self.closed:
                raise ConnectionError("the Socket Mode connection is closed")
            self.conn.sendall(_frame(opcode, data))

    def send_json(self, data: Mapping[str, Any]) -> None:
        self.send(_OP_TEXT, json.dumps(data).encode("utf-8"))

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort) and shut the socket down; the reader then ends."""
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                self.conn.sendall(_frame(_OP_CLOSE, struct.pack("!H", code)))
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)


class SocketMode:
    """The Socket Mode connections of one app: URLs handed out, clients, what they sent."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self._changed = threading.Condition()
        self._tickets: set[str] = set()  # issued by apps.connections.open, unused
        self._socket: SocketLink | None = None  # the connected client (newest wins)
        self._links: list[SocketLink] = []
        self._connections = 0
        self._received: list[JsonObject] = []  # every JSON message a client sent
        self._acks: dict[str, JsonObject] = {}  # envelope_id -> ack

    def open_url(self, base_url: str) -> str:
        """Return a new single-use WebSocket URL on the server at `base_url` (http://...)."""
        ticket = secrets.token_urlsafe(12)
        with self._changed:
            self._tickets.add(ticket)
        return "ws" + base_url[len("http") :] + f"/socket/{ticket}"

    def claim(self, ticket: str) -> bool:
        """Use up a URL's ticket; return False when it was never issued or is used."""
        with self._changed:
            if ticket not in self._tickets:
                return False
            self._tickets.discard(ticket)
            return True

    def serve(self, link: SocketLink, stream: io.BufferedIOBase) -> None:
        """Run one WebSocket connection until the client or close_all() closes it."""
        with self._changed:
            self._connections += 1
            self._links.append(link)
            self._socket = link
            self._changed.notify_all()
        try:
            link.send_json(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {
                        "host": "emulator",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
            message = bytearray()
            while True:
                try:
                    frame = _read_frame(stream)
                except ValueError:
                    link.close(1002)  # protocol error
                    break
                if frame is None:
                    break
                fin, opcode, data = frame
                if opcode == _OP_PING:
                    link.send(_OP_PONG, data)
                elif opcode == _OP_CLOSE:
                    link.close(1000)
                    break
                elif opcode in (_OP_TEXT, _OP_BINARY, _OP_CONTINUATION):
                    message += data
                    if fin:
                        self._message(bytes(message))
                        message.clear()
        except OSError:
            pass  # the peer went away mid-frame
        finally:
            link.close()
            with self._changed:
                self._links.remove(link)
                if self._socket is link:  # fall back to the newest remaining connection
                    self._socket = self._links[-1] if self._links else None
                self._changed.notify_all()

    def _message(self, data: bytes) -> None:
        try:
            message = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            message = {"raw": data.decode("latin-1")}
        if not isinstance(message, dict):
            message = {"raw": message}
        with self._changed:
            self._received.append(message)
            envelope_id = message.get("envelope_id")
            if isinstance(envelope_id, str):
                self._acks[envelope_id] = message
            self._changed.notify_all()

    def close_all(self, code: int = 1001) -> None:
        """Close every connection (1001: going away, as when the server stops)."""
        with self._changed:
            links = list(self._links)
        for link in links:
            link.close(code)

    def connected(self, timeout: float = 5.0) -> bool:
        """Wait until a Socket Mode client is connected; return whether one is."""
        with self._changed:
            return self._changed.wait_for(lambda: self._socket is not None, timeout)

    def send(self, envelope: Mapping[str, Any], *, timeout: float = 5.0) -> str:
        """Push an envelope to the connected client (waiting for one); return its envelope_id.

        Missing `envelope_id` / `accepts_response_payload` are filled in. Raises
        ConnectionError when no client connects within `timeout`.
        """
        data = copy.deepcopy(dict(envelope))
        data.setdefault("envelope_id", str(uuid.uuid4()))
        data.setdefault("accepts_response_payload", data.get("type") == "slash_commands")
        with self._changed:
            if not self._changed.wait_for(lambda: self._socket is not None, timeout):
                raise ConnectionError("no Socket Mode client is connected")
            link = self._socket
        assert link is not None
        link.send_json(data)
        return str(data["envelope_id"])

    def ack(self, envelope_id: str, timeout: float = 5.0) -> JsonObject | None:
        """Wait for the client's ack of an envelope: {"envelope_id", "payload"?}; None if none."""
        with self._changed:
            if not self._changed.wait_for(lambda: envelope_id in self._acks, timeout):
                return None
            return copy.deepcopy(self._acks[envelope_id])

    def received(self) -> list[JsonObject]:
        """Return every JSON message Socket Mode clients sent (acks included), in order."""
        with self._changed:
            return copy.deepcopy(self._received)

    @property
    def connections(self) -> int:
        """How many WebSocket connections were accepted so far."""
        with self._changed:
            return self._connections


def upgrade(handler: BaseHTTPRequestHandler, hub: SocketMode) -> None:
    """Answer a GET /socket/<ticket> request: refuse it, or switch to WebSocket and serve it."""
    key = handler.headers.get("Sec-WebSocket-Key", "").strip()
    wants = handler.headers.get("Upgrade", "").strip().lower() == "websocket"
    ticket = urlsplit(handler.path).path[len("/socket/") :]
    problem = None
    if not wants or not key or handler.headers.get("Sec-WebSocket-Version") != "13":
        problem = (400, b"not a WebSocket handshake")
    elif not hub.claim(ticket):
        problem = (404, b"unknown or used Socket Mode URL")
    if problem is not None:
        handler.send_response(problem[0])
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(problem[1])))
        handler.end_headers()
        handler.wfile.write(problem[1])
        return
    handler.close_connection = True
    handler.wfile.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {websocket_accept(key)}\r\n\r\n".encode("ascii")
    )
    hub.serve(SocketLink(ticket, handler.connection), handler.rfile)
