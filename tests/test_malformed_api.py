"""Malformed answers from the Training API fail the request, clearly, and are never success.

The bot talks to the Custom Vision emulator through `RewritingProxy`, a real HTTP reverse proxy
on 127.0.0.1 that forwards every call and rewrites the answers of chosen operations: invalid
JSON, an HTML page from a proxy (200, 403 or 502), missing fields, wrong types, a body cut
short, a delete that never reached the service. The emulator itself only serves well-formed
answers (its `Faults` cover throttling, 5xx, drops and truncated blob downloads, the last one
used here as is), so the proxy stands where a misbehaving gateway would.

Every case runs end to end: a signed slash command (and a click to approve a deletion) into
the running bot, the job against the proxy, and checks on what the requester sees in Slack,
on the stored request, on the audit log and on the emulator's record of what was deleted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from bot import audit
from emulators.customvision import API_BASE, Seed, routes
from emulators.stack import APPROVER, CHANNEL, REQUESTER, Stack, start_stack
from handlers import blocks
from tests.conftest import request_pending

SEED = Seed(projects=1, iterations=1, tags=2, images=12, predictions=2, image_bytes=128)

# --- the proxy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the proxy sends it on."""

    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    announce: int | None = None  # Content-Length to announce when it is not len(body)
    close_delimited: bool = False  # no Content-Length: the body ends when the connection does

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Rule:
    """How to answer one operation: `rewrite` gets the service's answer (or, without
    `forward`, an empty one: the call never reaches the service)."""

    rewrite: Callable[[Answer], Answer]
    forward: bool = True


def _operations() -> list[tuple[str, re.Pattern[str], str]]:
    found = []
    for method, template, operation in routes():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        found.append((method, re.compile(f"^{re.escape(API_BASE)}{pattern}$"), operation))
    return found


OPERATIONS = _operations()


def operation_of(method: str, path: str) -> str:
    """Return the spec's operationId of a Training API call ("Other" for anything else)."""
    for verb, pattern, operation in OPERATIONS:
        if verb == method and pattern.match(path):
            return operation
    return "Other"


@dataclass
class RewritingProxy:
    """A reverse proxy for the Training API that rewrites the answers of chosen operations."""

    upstream: str = ""
    rules: dict[str, Rule] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    url: str = ""
    stack: Stack | None = None  # the stack behind it, when started by proxied_stack
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> RewritingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one call per connection: truncation is simple

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the access log."""

            def do_GET(self) -> None:
                proxy._serve(self)

            do_POST = do_DELETE = do_PATCH = do_PUT = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        operation = operation_of(handler.command, path)
        self.seen.append(operation)
        rule = self.rules.get(operation)
        length = int(handler.headers.get("Content-Length") or 0)
        sent = handler.rfile.read(length) if length else b""
        if rule is not None and not rule.forward:
            answer = rule.rewrite(Answer(0))
        else:
            keep = ("Training-Key", "Accept", "Content-Type")
            response = requests.request(
                handler.command,
                self.upstream + handler.path,
                headers={k: v for k, v in handler.headers.items() if k in keep},
                data=sent or None,
                allow_redirects=False,
                timeout=30,
            )
            passed = tuple(
                (k, v)
                for k, v in response.headers.items()
                if k in ("Retry-After", "apim-request-id")
            )
            answer = Answer(
                response.status_code,
                response.content,
                response.headers.get("Content-Type", ""),
                passed,
            )
            response.close()
            if rule is not None:
                answer = rule.rewrite(answer)
        handler.send_response(answer.status)
        for name, value in answer.headers:
            handler.send_header(name, value)
        if answer.content_type and answer.body:
            handler.send_header("Content-Type", answer.content_type)
        if not answer.close_delimited:
            announced = len(answer.body) if answer.announce is None else answer.announce
            handler.send_header("Content-Length", str(announced))
        handler.end_headers()
        handler.wfile.write(answer.body)
        handler.wfile.flush()
        handler.close_connection = True


def fixed(status: int, body: bytes | str, content_type: str = "text/html; charset=utf-8") -> Rule:
    """Answer `body` whatever the service said."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Rule(lambda _: Answer(status, data, content_type))


def edited(change: Callable[[Any], Any]) -> Rule:
    """Answer the service's JSON after `change` (which may edit it in place or return anew)."""

    def rewrite(answer: Answer) -> Answer:
        data = answer.json()
        changed = change(data)
        result = data if changed is None else changed
        return replace(answer, body=json.dumps(result).encode("utf-8"))

    return Rule(rewrite)


def truncated(*, announce_full: bool) -> Rule:
    """Answer the first half of the service's body; announce the full length, or none."""

    def rewrite(answer: Answer) -> Answer:
        half = answer.body[: len(answer.body) // 2]
        if announce_full:
            return replace(answer, body=half, announce=len(answer.body))
        return replace(answer, body=half, close_delimited=True)

    return Rule(rewrite)


HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway"
    "</h1><p>The proxy server received an invalid response from an upstream server.</p>"
    "<!-- training-key: echo --></body></html>"
)


# --- fixtures ---------------------------------------------------------------------------------


@contextmanager
def proxied_stack(folder: Path, seed: Seed, *, verify_timeout: float) -> Iterator[RewritingProxy]:
    """A running stack whose Training API calls pass through a RewritingProxy (`.stack`)."""
    proxy = RewritingProxy().start()
    try:
        running = start_stack(
            folder,
            seed=seed,
            env={"CUSTOM_VISION_ENDPOINT": proxy.url},
            verify_timeout=verify_timeout,
        )
        proxy.upstream = running.cv.endpoint
        # The client's injected sleep: every retry still happens, without its back-off wait.
        running.bot.client._sleep = lambda _seconds: None
        proxy.stack = running
        try:
            yield proxy
        finally:
            running.close()
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewritingProxy]:
    with proxied_stack(tmp_path_factory.mktemp("malformed"), SEED, verify_timeout=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def stack(proxy: RewritingProxy) -> Stack:
    assert proxy.stack is not None
    return proxy.stack


@pytest.fixture
def clean(stack: Stack, proxy: RewritingProxy) -> Iterator[Stack]:
    """The module's stack with no rule and no fault; both are cleared again afterwards."""
    proxy.rules.clear()
    stack.cv.faults.blob_truncate_rate = 0.0
    yield stack
    proxy.rules.clear()
    stack.cv.faults.blob_truncate_rate = 0.0
    stack.wait_delivered()


def project_id(stack: Stack) -> str:
    return stack.cv.data.project_ids()[0]


def failed_export(stack: Stack, text: str) -> tuple[str, str]:
    """Run an export that must fail; return its id and the error the requester was told."""
    rid = stack.request_id(stack.command(REQUESTER, text))
    assert stack.wait_status(rid, "failed", "done") == "failed", stack.bot.store.get(rid)
    stack.wait_delivered()
    record = stack.bot.store.get(rid)
    assert record.error
    assert record.message_ts is not None
    thread = [m.text for m in stack.slack.messages(CHANNEL, thread_ts=record.message_ts)]
    told = f"<@{REQUESTER.user_id}> {rid} failed: {blocks.bot_text(record.error)}"
    assert told in thread or f"{rid} failed: {blocks.bot_text(record.error)}" in thread, thread
    packages = [f.name for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]
    assert packages == []  # nothing half-built was posted as if it were the export
    failures = [
        e for e in audit.events(stack.bot.db.conn, request_id=rid) if e.action == "request.failed"
    ]
    assert [e.details.get("error") for e in failures] == [record.error]
    return rid, record.error


# --- exports: each malformed answer fails the request with a clear message ---------------------

GUID = "3f0b2c4e-8a55-4d8e-9a55-0b3e6c1d2f00"

NOT_VALID = "The response of Custom Vision to {} was not valid: "


def drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda obj: {k: v for k, v in obj.items() if k != key}


CASES: list[tuple[str, str, Rule, str]] = [
    # (case, operation, rule, the error the requester reads)
    (
        "invalid JSON",
        "GetProject",
        fixed(200, '{"id": "x", "name": ', "application/json"),
        NOT_VALID.format("GetProject") + "not JSON (application/json).",
    ),
    (
        "HTML page with 200",
        "GetProject",
        fixed(200, HTML_PAGE),
        NOT_VALID.format("GetProject") + "not JSON (text/html).",
    ),
    (
        "HTML page with 403",
        "GetProject",
        fixed(403, HTML_PAGE),
        NOT_VALID.format("GetProject") + "HTTP 403 without a Custom Vision error body.",
    ),
    (
        "HTML page with 502",
        "GetProject",
        fixed(502, HTML_PAGE),
        "Custom Vision failed GetProject (HTTP 502) after 6 attempts",
    ),
    (
        "empty body",
        "GetProject",
        fixed(200, b"", "application/json"),
        NOT_VALID.format("GetProject") + "HTTP 200 without a body.",
    ),
    (
        "JSON null",
        "GetProject",
        fixed(200, "null", "application/json"),
        NOT_VALID.format("GetProject") + "Project: expected an object, got null.",
    ),
    (
        "an array instead of an object",
        "GetProject",
        edited(lambda project: [project]),
        NOT_VALID.format("GetProject") + "Project: expected an object, got an array.",
    ),
    (
        "missing id",
        "GetProject",
        edited(drop("id")),
        NOT_VALID.format("GetProject") + "Project.id: required field is missing.",
    ),
    (
        "name of the wrong type",
        "GetProject",
        edited(lambda project: {**project, "name": 42}),
        NOT_VALID.format("GetProject") + "Project.name: expected a string, got a number.",
    ),
    (
        "id not a GUID",
        "GetProject",
        edited(lambda project: {**project, "id": "../../etc"}),
        NOT_VALID.format("GetProject") + "Project.id: expected a GUID.",
    ),
    (
        "body cut short at a closed connection",
        "GetProject",
        truncated(announce_full=False),
        NOT_VALID.format("GetProject") + "not JSON (application/json).",
    ),
    (
        "body cut short, full length announced",
        "GetProject",
        truncated(announce_full=True),
        NOT_VALID.format("GetProject") + "the answer was cut short after 6 attempts.",
    ),
    (
        "tags an object instead of a list",
        "GetTags",
        edited(lambda tags: {"value": tags}),
        NOT_VALID.format("GetTags") + "Tag[]: expected an array, got an object.",
    ),
    (
        "a tag without a name",
        "GetTags",
        edited(lambda tags: [drop("name")(t) for t in tags]),
        NOT_VALID.format("GetTags") + "Tag[0].name: required field is missing.",
    ),
    (
        "iterations as an HTML page",
        "GetIterations",
        fixed(200, HTML_PAGE),
        NOT_VALID.format("GetIterations") + "not JSON (text/html).",
    ),
    (
        "an image whose id is null",
        "GetImages",
        edited(lambda images: [{**images[0], "id": None}, *images[1:]]),
        NOT_VALID.format("GetImages") + "Image[0].id: expected a string, got null.",
    ),
    (
        "predictions cut short",
        "QueryPredictions",
        truncated(announce_full=False),
        NOT_VALID.format("QueryPredictions") + "not JSON (application/json).",
    ),
]


@pytest.mark.parametrize(("case", "operation", "rule", "error"), CASES, ids=[c[0] for c in CASES])
def test_malformed_api_answer_fails_the_export_with_a_clear_message(
    clean: Stack, proxy: RewritingProxy, case: str, operation: str, rule: Rule, error: str
) -> None:
    stack = clean
    proxy.rules[operation] = rule
    rid, told = failed_export(stack, f"export project {project_id(stack)} --no-images")
    assert told == error
    assert stack.bot.db.conn.execute(
        "SELECT status FROM jobs WHERE request_id = ?", (int(rid[2:]),)
    ).fetchone() == ("failed",)


def test_malformed_api_truncated_downloads_fail_the_export(clean: Stack) -> None:
    stack = clean
    stack.cv.faults.blob_truncate_rate = 1.0  # the emulator's own switch: every blob cut in half
    _, told = failed_export(stack, f"export images {project_id(stack)}")
    assert re.fullmatch(
        re.escape(NOT_VALID.format("BlobDownload"))
        + r"the download was truncated \(\d+ of \d+ bytes\) after 6 attempts\.",
        told,
    ), told


def test_malformed_api_an_html_page_for_every_call_fails_and_says_so(
    clean: Stack, proxy: RewritingProxy
) -> None:
    stack = clean
    for _, _, operation in routes():
        proxy.rules[operation] = fixed(200, HTML_PAGE)
    _, told = failed_export(stack, "export account")
    assert told == NOT_VALID.format("GetDomains") + "not JSON (text/html)."


# --- deletions: nothing malformed is ever taken for "deleted" ---------------------------------


def pending_deletion(stack: Stack, images: list[str]) -> str:
    project = project_id(stack)
    return request_pending(stack, f"delete images {project} --ids {','.join(images)}")


def approve(stack: Stack, rid: str) -> str:
    response = stack.click(APPROVER, rid, "approve")
    assert response.status_code == 200
    return stack.wait_status(rid, "done", "failed")


def test_malformed_api_delete_swallowed_by_a_proxy_is_not_taken_for_done(
    clean: Stack, proxy: RewritingProxy
) -> None:
    stack = clean
    images = stack.cv.data.image_ids(project_id(stack))[:2]
    rid = pending_deletion(stack, images)
    # The gateway answers the delete itself, with a friendly page, and never forwards it.
    proxy.rules["DeleteImages"] = Rule(
        lambda _: Answer(200, b"<html>OK</html>", "text/html"), False
    )
    assert approve(stack, rid) == "failed"
    assert stack.cv.deleted_image_counts() == {}
    assert all(stack.cv.data.has_image(project_id(stack), i) for i in images)
    record = stack.bot.store.get(rid)
    assert record.error == (
        f"Not every target was removed: 2 of 2 targets still exist after 1 s: image {images[0]}; "
        f"image {images[1]}. They are listed as survived in the receipt."
    )
    assert "request.completed" not in [
        e.action for e in audit.events(stack.bot.db.conn, request_id=rid)
    ]


VERIFY = "Every deletion call was answered, but the verification could not finish: "


@pytest.mark.parametrize(
    ("case", "rule", "error"),
    [
        (
            "an object instead of a list",
            edited(lambda images: {"value": images}),
            "Image[]: expected an array, got an object.",
        ),
        ("an HTML page", fixed(200, HTML_PAGE), "not JSON (text/html)."),
        ("cut short", truncated(announce_full=False), "not JSON (application/json)."),
        ("a 403 page", fixed(403, HTML_PAGE), "HTTP 403 without a Custom Vision error body."),
    ],
)
def test_malformed_api_malformed_verification_is_not_taken_for_gone(
    clean: Stack, proxy: RewritingProxy, case: str, rule: Rule, error: str
) -> None:
    stack = clean
    project = project_id(stack)
    deleted = set(stack.cv.deleted_image_counts())
    images = [i for i in stack.cv.data.image_ids(project) if i not in deleted][:1]
    rid = pending_deletion(stack, images)
    sent = len(stack.cv.calls_to("DeleteImages"))

    def after_the_deletion(answer: Answer) -> Answer:
        # The re-read before the call answers truly; the reads that verify it do not.
        return rule.rewrite(answer) if len(stack.cv.calls_to("DeleteImages")) > sent else answer

    proxy.rules["GetImagesByIds"] = Rule(after_the_deletion)
    assert approve(stack, rid) == "failed"
    record = stack.bot.store.get(rid)
    assert record.error == VERIFY + NOT_VALID.format("GetImagesByIds") + error
    assert "request.completed" not in [
        e.action for e in audit.events(stack.bot.db.conn, request_id=rid)
    ]
    stack.wait_delivered()
    (receipt,) = [f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-receipt.json"]
    verified = {item["verified"] for item in json.loads(receipt.data)["items"]}
    assert verified and "gone" not in verified, verified
