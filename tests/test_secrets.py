"""The bot token, the signing secret and the training key never leave the bot.

A full end-to-end run (exports with files, a deletion with a refusal and an approval, a
rejection, a failure, throttling by Custom Vision, Slack errors and rate limits, forged,
malformed and unknown requests, audit exports) with every logger of the process at DEBUG
(slack_bolt, slack_sdk, urllib3 included). Afterwards every place a secret could have landed
is searched for each of the three values:

- every Slack Web API call, upload and response_url call the emulator recorded (its
  parameters; the bot token may only travel as the Authorization header of Web API calls),
  every message (and its earlier versions), ephemeral message, modal and file posted (name,
  title, comment, bytes, and each member of every zip);
- every Training API call the emulator recorded (path, query, body; no key on blob links);
- every HTTP answer the bot gave to Slack;
- every log line, with its traceback;
- every row of every table of the database (the audit log included), and every file the bot
  left on disk.

A second test runs `python -m bot serve` as a child process and searches its stdout/stderr.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from emulators.customvision import Exchange, Seed
from emulators.slack.driver import SlackDriver
from emulators.stack import (
    APPROVER,
    BOT_TOKEN,
    CHANNEL,
    REQUESTER,
    SIGNING_SECRET,
    STRANGER,
    TRAINING_KEY,
    Stack,
    start_stack,
)
from tests.conftest import click_answer

SEED = Seed(projects=2, iterations=2, tags=3, images=20, predictions=4, image_bytes=256)
SECRETS = {"bot token": BOT_TOKEN, "signing secret": SIGNING_SECRET, "training key": TRAINING_KEY}
LOGGERS = ("", "slack_bolt", "slack_sdk", "urllib3", "waitress", "bot", "handlers")
SERVING = re.compile(r"serving /cv on http://0\.0\.0\.0:(\d+)/slack/events")


class Everything(logging.Handler):
    """Formats every record of the process, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(threadName)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logs() -> Iterator[Everything]:
    handler = Everything()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def leaks(where: str, data: str | bytes) -> list[tuple[str, str]]:
    """Return (where, which secret) for each secret found in `data` (zips searched inside)."""
    blob = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    found = [(where, name) for name, value in SECRETS.items() if value.encode() in blob]
    if blob[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            for member in archive.namelist():
                found += leaks(f"{where}!{member}", member)
                found += leaks(f"{where}!{member}", archive.read(member))
    return found


def everything_slack_saw(stack: Stack) -> Iterator[tuple[str, str | bytes]]:
    slack = stack.slack
    for n, call in enumerate(slack.calls):
        yield f"slack call {n} {call.method}", json.dumps(call.params, default=str)
        yield f"slack call {n} {call.method} error", str(call.error)
    channels = [CHANNEL, "C0GENERAL", "C0RANDOM", "C0AUDIT"]
    for channel in channels:
        for message in slack.messages(channel, include_deleted=True):
            replies = slack.messages(channel, thread_ts=message.ts, include_deleted=True)
            for shown in [message, *replies]:
                yield (
                    f"message {channel} {shown.ts}",
                    json.dumps([shown.text, shown.blocks, shown.attachments, shown.files]),
                )
                for version in shown.history:
                    yield (
                        f"earlier version of {shown.ts}",
                        json.dumps([version.text, version.blocks]),
                    )
    for ephemeral in slack.ephemerals():
        yield f"ephemeral {ephemeral.ts}", json.dumps([ephemeral.text, ephemeral.blocks])
    for view in slack.views():
        yield f"view {view.id}", json.dumps(view.view)
    for file in slack.files():
        yield f"file {file.name}", json.dumps([file.name, file.title, file.initial_comment])
        yield f"file {file.name} bytes", file.data


def everything_on_disk(folder: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(folder)), path.read_bytes()


def every_row(database: Path) -> Iterator[tuple[str, str]]:
    conn = sqlite3.connect(database)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                yield f"table {table}", repr(row)
    finally:
        conn.close()


def test_secrets_search_looks_inside_zips_and_text() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner/readme.txt", f"key={TRAINING_KEY} " * 50)
    assert TRAINING_KEY.encode() not in buffer.getvalue()  # deflated: a plain search misses it
    assert leaks("zip", buffer.getvalue()) == [("zip!inner/readme.txt", "training key")]
    assert leaks("line", f"Authorization: Bearer {BOT_TOKEN}") == [("line", "bot token")]


# --- the run ----------------------------------------------------------------------------------


def full_run(stack: Stack, answers: list[requests.Response]) -> dict[str, str]:
    """Use every surface of the bot once, good paths and bad."""
    assert stack.driver is not None
    driver = stack.driver
    cv = stack.cv
    project = cv.data.project_ids()[0]

    def command(person: Any, text: str) -> str:
        response = stack.command(person, text)
        answers.append(response)
        return str(response.json()["text"])

    def rid_of(text: str) -> str:
        return text.split()[0].rstrip(":.")

    # Exports with files, one of them throttled by Custom Vision and by Slack.
    cv.faults.tps_cap = 25
    stack.slack.inject_ratelimit("chat.postMessage", times=2, retry_after=1)
    exported = rid_of(command(REQUESTER, f"export project {project} --ticket DSR-9 --reason x"))
    assert stack.wait_status(exported, "done", "failed", timeout=60) == "done"
    cv.faults.tps_cap = None
    account = rid_of(command(REQUESTER, "export account"))
    assert stack.wait_status(account, "done", "failed", timeout=60) == "done"

    # A deletion: refused for a stranger, approved by an approver, with a Slack error meanwhile.
    images = cv.data.image_ids(project)[:3]
    deletion = rid_of(command(REQUESTER, f"delete images {project} --ids {','.join(images)}"))
    assert stack.wait_status(deletion, "pending", "failed") == "pending"
    stack.wait_delivered()
    click_answer(stack, STRANGER, deletion, "approve")
    stack.slack.inject_error("chat.update", "internal_error", times=1)
    click_answer(stack, APPROVER, deletion, "approve")
    assert stack.wait_status(deletion, "done", "failed", timeout=60) == "done"

    # A rejection through the dialog.
    tag = cv.data.tag_ids(project)[0]
    rejected = rid_of(command(REQUESTER, f"delete tag {project} {tag}"))
    assert stack.wait_status(rejected, "pending", "failed") == "pending"
    stack.wait_delivered()
    click_answer(stack, APPROVER, rejected, "reject")
    view = stack.slack.views(APPROVER.user_id)[-1]
    answers.append(
        driver.submit_view(
            APPROVER.user_id,
            "request.reject_reason",
            view.view["private_metadata"],
            {"reason": {"value": "not this subject"}},
        )
    )
    assert stack.wait_status(rejected, "rejected") == "rejected"

    # A failure, and Custom Vision answering 5xx for a while.
    cv.faults.error_rate = 0.3
    missing = rid_of(command(REQUESTER, "export project 0badc0de-0000-4000-8000-000000000000"))
    assert stack.wait_status(missing, "failed", "done", timeout=60) == "failed"
    cv.faults.error_rate = 0.0

    # Hostile requests: forged, stale, malformed, unknown action.
    body = urlencode(driver.command_form(REQUESTER.user_id, CHANNEL, "export projects")).encode()
    answers.append(driver.post(body, signature="v0=" + "0" * 64))
    answers.append(driver.post(body, timestamp=int(time.time()) - 3600))
    answers.append(driver.post(b"payload=%7Bnot-json"))
    ts = stack.bot.store.get(deletion).message_ts
    payload = driver.block_actions_payload(APPROVER.user_id, CHANNEL, ts, "request.nope", deletion)
    answers.append(driver.post(driver.interactive_body(payload)))

    # Reading the audit, status and help.
    command(APPROVER, "audit --format csv")
    command(APPROVER, "audit --format jsonl")
    command(APPROVER, "audit verify")
    command(REQUESTER, f"status {deletion}")
    command(REQUESTER, "status")
    command(STRANGER, "help")
    base = stack.bot_url.rsplit("/slack/events", 1)[0]
    answers.append(requests.get(base + "/healthz", timeout=10))
    stack.wait_delivered()
    return {"export": exported, "account": account, "deletion": deletion}


def test_secrets_appear_nowhere_after_a_full_run(tmp_path: Path, debug_logs: Everything) -> None:
    answers: list[requests.Response] = []
    sent_to_cv: list[Exchange] = []
    stack = start_stack(tmp_path / "bot", seed=SEED)
    try:
        stack.cv.hooks.append(sent_to_cv.append)
        made = full_run(stack, answers)
        posted = {f.name for f in stack.slack.files()}
        assert {f"{made['export']}-export.zip", f"{made['deletion']}-receipt.json"} <= posted
        assert any(name.startswith("audit-all-") for name in posted)
        slack_seen = list(everything_slack_saw(stack))
        calls = stack.slack.calls
        cv_calls = list(stack.cv.calls)
    finally:
        stack.close()  # its logs are part of the search too
    assert len(debug_logs.lines) > 100  # DEBUG really was on
    assert any(line.startswith("DEBUG slack_sdk") for line in debug_logs.lines)
    assert any(line.startswith("DEBUG urllib3") for line in debug_logs.lines)

    found: list[tuple[str, str]] = []
    for where, data in slack_seen:
        found += leaks(where, data)
    for call in cv_calls:
        found += leaks(f"cv {call.operation_id}", json.dumps([call.path, call.query]))
    for exchange in sent_to_cv:
        found += leaks(
            f"cv {exchange.operation_id} body", json.dumps(exchange.request_body, default=str)
        )
    for n, response in enumerate(answers):
        found += leaks(f"answer {n}", response.content)
        found += leaks(f"answer {n} headers", json.dumps(dict(response.headers)))
    for n, line in enumerate(debug_logs.lines):
        found += leaks(f"log line {n}: {line[:80]}", line)
    for where, row in every_row(tmp_path / "bot" / "cvdsr.db"):
        found += leaks(where, row)
    for where, data in everything_on_disk(tmp_path / "bot"):
        found += leaks(f"disk {where}", data)
    assert found == []

    # The token travels only where it must: as the Authorization of Web API calls.
    assert {c.token for c in calls if c.method in ("upload", "response_url")} <= {None}
    assert {c.token for c in calls if c.method not in ("upload", "response_url")} == {BOT_TOKEN}
    # The key goes to the Training API only, never to blob storage.
    assert not any(c.key_sent for c in cv_calls if c.operation_id == "Blob")
    assert any(c.operation_id == "Blob" for c in cv_calls)


# --- the real command line --------------------------------------------------------------------


def test_secrets_appear_nowhere_in_the_output_of_python_m_bot_serve(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "emulators", seed=SEED, start_bot=False)
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "CUSTOM_VISION_", "BOT_"))
    }
    env = {**inherited, **stack.env, "PYTHONUNBUFFERED": "1"}
    output = tmp_path / "bot.log"
    try:
        with output.open("wb") as sink:
            proc = subprocess.Popen(  # our own interpreter and module
                [sys.executable, "-m", "bot", "serve"],
                env=env,
                cwd=tmp_path,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            assert stack.slack.wait_for(
                lambda: (
                    SERVING.search(output.read_text(errors="replace")) is not None
                    or proc.poll() is not None
                ),
                timeout=60,
            )
            found = SERVING.search(output.read_text(errors="replace"))
            assert found is not None, output.read_text(errors="replace")
            url = f"http://127.0.0.1:{found.group(1)}/slack/events"
            driver = SlackDriver(url, SIGNING_SECRET, stack.slack)
            answer = driver.command(REQUESTER.user_id, CHANNEL, "export projects --reason r")
            rid = answer.json()["text"].split()[0].rstrip(":.")
            assert stack.slack.wait_for(
                lambda: any(f.name == f"{rid}-export.zip" for f in stack.slack.files(CHANNEL)),
                timeout=60,
            )
            body = urlencode(driver.command_form(REQUESTER.user_id, CHANNEL, "help")).encode()
            assert driver.post(body, signature="v0=" + "1" * 64).status_code == 401
            assert driver.post(b"payload=%7B").status_code == 400
            assert driver.command(STRANGER.user_id, CHANNEL, "status R-999").status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    finally:
        stack.close()
    text = output.read_bytes()
    assert b"serving /cv" in text
    assert leaks("python -m bot serve output", text) == []
    # The log filter replaces a secret it sees with [redacted]; it never had to.
    assert b"[redacted]" not in text
