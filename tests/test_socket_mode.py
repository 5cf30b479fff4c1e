"""End to end over Socket Mode: Bolt's SocketModeHandler against the Slack emulator's WebSocket.

The bot connects as in production (apps.connections.open with the app-level token, then the
WebSocket); commands and clicks arrive as envelopes and the bot's replies come back as acks.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bot.app import build_bot, socket_mode
from bot.config import load_config
from bot.ids import parse_request_id
from emulators.customvision import CustomVisionEmulator, Seed
from emulators.slack.driver import SlackDriver
from emulators.slack.socket_mode import websocket_accept
from emulators.slack.webapi import SlackEmulator
from emulators.stack import BOT_TOKEN, CHANNEL, REQUESTER, bot_env, start_emulators

APP_TOKEN = "xapp-1-A0EMULATOR-1-emulator-app-token"  # a test value
SEED = Seed(projects=2, iterations=2, tags=3, images=20, predictions=4, image_bytes=256)


@dataclass
class SocketStack:
    cv: CustomVisionEmulator
    slack: SlackEmulator
    bot: Any
    driver: SlackDriver

    def request_id(self, reply: dict[str, Any]) -> str:
        for word in str(reply["text"]).replace(":", " ").replace(".", " ").split():
            if parse_request_id(word) is not None:
                return word
        raise AssertionError(f"no request id in {reply!r}")

    def wait_status(self, request_id: str, *statuses: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = str(self.bot.store.get(request_id).status)
            if status in statuses:
                return status
            time.sleep(0.02)
        raise AssertionError(f"{request_id} never reached {statuses}")

    def wait_delivered(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.bot.store.outbox_pending_count():
            assert time.monotonic() < deadline, "Slack deliveries still pending"
            time.sleep(0.02)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SocketStack]:
    cv, slack = start_emulators(SEED)
    slack.app_token = APP_TOKEN
    try:
        config = load_config(bot_env(cv, slack, tmp_path, SLACK_APP_TOKEN=APP_TOKEN))
        assert config.socket_mode
        bot = build_bot(config, verify_timeout=10.0)
        bot.start()
        try:
            handler = socket_mode(bot)
            handler.connect()  # type: ignore[no-untyped-call]  # slack_bolt leaves it unannotated
            try:
                assert slack.socket_mode.connected(timeout=5.0)
                driver = SlackDriver("socket-mode", "", slack, command=config.bot_command)
                yield SocketStack(cv, slack, bot, driver)
            finally:
                handler.close()  # type: ignore[no-untyped-call]  # likewise
        finally:
            bot.stop()
    finally:
        slack.stop()
        cv.stop()
    assert slack.internal_errors == []


def test_socket_export_acks_with_request_id_and_posts_files_in_thread(
    stack: SocketStack,
) -> None:
    opened = stack.slack.calls_to("apps.connections.open")
    assert [(c.ok, c.token) for c in opened] == [(True, APP_TOKEN)]
    hello = stack.slack.socket_mode.received()  # the client speaks only to ack
    assert hello == []

    reply = stack.driver.socket_command(REQUESTER.user_id, CHANNEL, "export projects")
    assert reply["response_type"] == "ephemeral"
    rid = stack.request_id(reply)
    assert stack.slack.ephemerals(user_id=REQUESTER.user_id)[-1].via == "ack"

    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    stack.wait_delivered()
    thread_ts = stack.bot.store.get(rid).message_ts
    parts = [f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]
    assert parts, [f.name for f in stack.slack.files(CHANNEL)]
    assert {p.thread_ts for p in parts} == {thread_ts}
    assert all(p.completed and p.data for p in parts)


def test_socket_bad_grammar_gets_usage_in_the_ack(stack: SocketStack) -> None:
    before = len(stack.cv.calls)
    reply = stack.driver.socket_command(REQUESTER.user_id, CHANNEL, "exprot projects")
    assert reply["response_type"] == "ephemeral"
    assert "did you mean 'export'" in reply["text"]
    assert "Usage: `/cv " in reply["text"]
    assert len(stack.cv.calls) == before
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_socket_requester_cannot_approve_own_deletion(stack: SocketStack) -> None:
    project = stack.cv.data.project_ids()[0]
    tag = stack.cv.data.tag_ids(project)[0]
    reply = stack.driver.socket_command(
        REQUESTER.user_id, CHANNEL, f"delete images {project} --tag {tag} --ticket DSR-1"
    )
    rid = stack.request_id(reply)
    assert stack.wait_status(rid, "pending", "failed") == "pending"
    stack.wait_delivered()
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None

    ack = stack.driver.socket_click(REQUESTER.user_id, CHANNEL, ts, "request.approve", rid)
    assert ack == {}  # a plain ack; the refusal goes through respond()
    assert stack.slack.wait_for(
        lambda: any(
            "cannot approve your own request" in e.text and e.via == "response_url"
            for e in stack.slack.ephemerals(user_id=REQUESTER.user_id)
        ),
        timeout=5.0,
    )
    assert stack.bot.store.get(rid).status == "pending"


def test_apps_connections_open_requires_the_app_token(stack: SocketStack) -> None:
    url = stack.slack.api_url + "apps.connections.open"

    def error(token: str | None) -> object:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(url, headers=headers, timeout=5).json().get("error")

    assert error(None) == "not_authed"
    assert error("xapp-1-wrong") == "invalid_auth"
    assert error(BOT_TOKEN) == "not_allowed_token_type"
    answer = requests.post(url, headers={"Authorization": f"Bearer {APP_TOKEN}"}, timeout=5)
    assert answer.json()["url"].startswith("ws://127.0.0.1:")
    # The app token opens sockets only; Web API methods still want the bot token.
    chat = requests.post(
        stack.slack.api_url + "chat.postMessage",
        headers={"Authorization": f"Bearer {APP_TOKEN}"},
        json={"channel": CHANNEL, "text": "hi"},
        timeout=5,
    )
    assert chat.json()["error"] == "not_allowed_token_type"


def test_websocket_handshake_hello_ping_and_single_use_url(stack: SocketStack) -> None:
    answer = requests.post(
        stack.slack.api_url + "apps.connections.open",
        headers={"Authorization": f"Bearer {APP_TOKEN}"},
        timeout=5,
    ).json()
    host_port, _, path = answer["url"][len("ws://") :].partition("/")
    host, _, port = host_port.partition(":")
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    handshake = (
        f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    assert websocket_accept(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 example
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(handshake)
        stream = sock.makefile("rb")
        try:
            status = stream.readline()
            assert status.startswith(b"HTTP/1.1 101"), status
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            assert headers["sec-websocket-accept"] == websocket_accept(key)
            opcode, data = read_frame(stream)
            assert opcode == 1 and json.loads(data)["type"] == "hello"
            sock.sendall(masked_frame(9, b"are you there"))
            assert read_frame(stream) == (10, b"are you there")
            sock.sendall(masked_frame(8, b"\x03\xe8"))
            assert read_frame(stream)[0] == 8
        finally:
            stream.close()
    # The URL was used: a second handshake is refused.
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(handshake)
        assert sock.recv(64).startswith(b"HTTP/1.0 404")


def masked_frame(opcode: int, data: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bytes([0x80 | opcode, 0x80 | len(data)]) + mask + body


def read_frame(stream: Any) -> tuple[int, bytes]:
    head = stream.read(2)
    assert not head[1] & 0x80  # a server never masks
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(stream.read(2), "big")
    return head[0] & 0x0F, stream.read(size)


def test_socket_home_opened_publishes_once_whatever_the_retries(stack: SocketStack) -> None:
    # The same listener as over HTTP: an events_api envelope, acked, then views.publish.
    body = stack.driver.home_opened_body(REQUESTER.user_id)
    assert [(a.retry, a.outcome) for a in stack.driver.socket_event(body)] == [(0, "ok")]
    assert stack.slack.wait_for(lambda: len(stack.slack.published(REQUESTER.user_id)) == 1)
    view = stack.slack.published(REQUESTER.user_id)[0]
    assert [b["text"]["text"] for b in view.blocks if b["type"] == "header"] == [
        "Data-subject requests",
        "Your open requests (0)",
    ]

    # Slack sends the envelope again (retry_attempt 1, "timeout"): acked, nothing published.
    again = stack.driver.events_envelope(body, retry_attempt=1, retry_reason="timeout")
    assert stack.driver.socket_envelope(again) == {}
    other = stack.driver.home_opened_body(REQUESTER.user_id)  # a new opening of the tab
    stack.driver.socket_event(other)
    assert stack.slack.wait_for(lambda: len(stack.slack.published(REQUESTER.user_id)) >= 2)
    assert len(stack.slack.calls_to("views.publish")) == 2
