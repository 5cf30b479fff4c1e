"""The Slack app manifests, held to the code: the command, the transport and exactly the scopes
of the Web API methods the bot calls."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_sdk import WebClient

from bot.config import load_config
from emulators.customvision import Seed
from emulators.stack import start_emulators
from handlers.checks import REQUIRED_SCOPES

ROOT = Path(__file__).resolve().parent.parent
SOCKET = ROOT / "manifest.yaml"
HTTP = ROOT / "manifest-http.yaml"
EVENTS_URL = "https://YOUR-HOST/slack/events"

# Slack's documented scope for each Web API method (api.slack.com/methods/<method>).
# A method missing here fails the test: add it with its scope, then the manifests.
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "auth.test": frozenset(),
    "chat.postMessage": frozenset({"chat:write"}),
    "chat.update": frozenset({"chat:write"}),
    "chat.postEphemeral": frozenset({"chat:write"}),
    # Public and private channels; the bot reads both (private ones hold the requests).
    # Group DMs too: without mpim:read Slack answers missing_scope there (issue 13, item 4).
    "conversations.info": frozenset({"channels:read", "groups:read", "mpim:read"}),
    "files.getUploadURLExternal": frozenset({"files:write"}),
    "files.completeUploadExternal": frozenset({"files:write"}),
    "files.info": frozenset({"files:read"}),
    "usergroups.users.list": frozenset({"usergroups:read"}),
    "users.info": frozenset({"users:read"}),
    "views.open": frozenset(),
    "views.publish": frozenset(),
}
# The slash command itself.
FEATURE_SCOPES = frozenset({"commands"})

_SDK_CALL = re.compile(r"\.([a-z]+_[A-Za-z_]+)\(")
_API_CALL = re.compile(r"""\.(?:api_call|call)\(\s*["']([a-z]+(?:\.[A-Za-z]+)+)["']""")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def sources() -> list[Path]:
    """Every module that may call Slack: handlers/ and bot/ (the emulators implement Slack)."""
    files = sorted((ROOT / "handlers").rglob("*.py")) + sorted((ROOT / "bot").rglob("*.py"))
    return [f for f in files if "emulators" not in f.parts]


def web_api_methods_called() -> dict[str, set[str]]:
    """Return each Web API method the code calls -> the files calling it.

    slack-sdk calls are `client.chat_postMessage(...)` (a method of WebClient itself);
    plain calls are `.call("auth.test", ...)` / `.api_call("auth.test", ...)`.
    """
    sdk_methods = {name for name in vars(WebClient) if not name.startswith("_")}
    found: dict[str, set[str]] = {}
    for path in sources():
        text = path.read_text(encoding="utf-8")
        names = {m for m in _SDK_CALL.findall(text) if m in sdk_methods and m != "api_call"}
        methods = {name.replace("_", ".") for name in names} | set(_API_CALL.findall(text))
        for method in methods:
            found.setdefault(method, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("path", [SOCKET, HTTP], ids=["socket", "http"])
def test_manifest_declares_the_default_command(path: Path) -> None:
    commands = load(path)["features"]["slash_commands"]
    default = load_config({}, serve=False).bot_command
    assert [c["command"] for c in commands] == [default]
    assert commands[0]["description"]
    assert commands[0]["usage_hint"].startswith("help | export project <project-id>")
    assert load(path)["features"]["bot_user"]["display_name"] == "cv-dsr-bot"


def test_manifest_scan_finds_the_calls_of_every_module() -> None:
    called = web_api_methods_called()
    # A scanner that silently finds nothing would make the scope test pass vacuously.
    assert "handlers/outbox.py" in called["chat.postMessage"]
    assert "handlers/outbox.py" in called["files.completeUploadExternal"]
    assert "handlers/directory.py" in called["usergroups.users.list"]
    assert "handlers/webapi.py" in called["auth.test"]
    assert "handlers/checks.py" in called["users.info"]


def test_manifest_scopes_are_exactly_those_of_the_methods_called() -> None:
    called = web_api_methods_called()
    unknown = sorted(set(called) - set(METHOD_SCOPES))
    assert unknown == [], f"add the scopes of {unknown} to METHOD_SCOPES and the manifests"
    needed = set(FEATURE_SCOPES)
    for method in called:
        needed |= METHOD_SCOPES[method]
    for path in (SOCKET, HTTP):
        declared = load(path)["oauth_config"]["scopes"]["bot"]
        assert len(declared) == len(set(declared)), f"{path.name} repeats a scope"
        assert set(declared) == needed, path.name
        assert "user" not in load(path)["oauth_config"]["scopes"]  # no user token
    assert needed == REQUIRED_SCOPES  # what `python -m bot check` asks Slack for


def test_manifest_files_read_is_needed_because_the_outbox_calls_files_info() -> None:
    assert "handlers/outbox.py" in web_api_methods_called()["files.info"]
    assert "files:read" in load(SOCKET)["oauth_config"]["scopes"]["bot"]


def test_manifest_socket_mode_needs_no_url() -> None:
    manifest = load(SOCKET)
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"] == {"is_enabled": True}
    assert manifest["settings"]["event_subscriptions"] == {"bot_events": ["app_home_opened"]}
    assert all("url" not in c for c in manifest["features"]["slash_commands"])


def test_manifest_http_points_command_and_buttons_at_the_bot_route() -> None:
    manifest = load(HTTP)
    assert manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["settings"]["interactivity"] == {"is_enabled": True, "request_url": EVENTS_URL}
    assert [c["url"] for c in manifest["features"]["slash_commands"]] == [EVENTS_URL]
    assert manifest["settings"]["event_subscriptions"] == {
        "request_url": EVENTS_URL,
        "bot_events": ["app_home_opened"],
    }
    # The route the bot serves (handlers/wsgi.py, wsgi_app).
    assert 'path == "/slack/events"' in (ROOT / "handlers" / "wsgi.py").read_text(encoding="utf-8")


def test_manifest_files_differ_only_in_the_transport() -> None:
    def without_transport(manifest: dict[str, Any]) -> dict[str, Any]:
        settings = dict(manifest["settings"])
        settings.pop("socket_mode_enabled")
        settings["interactivity"] = {"is_enabled": settings["interactivity"]["is_enabled"]}
        settings["event_subscriptions"] = {
            k: v for k, v in settings["event_subscriptions"].items() if k != "request_url"
        }
        commands = [
            {k: v for k, v in c.items() if k != "url"}
            for c in manifest["features"]["slash_commands"]
        ]
        return {
            **manifest,
            "settings": settings,
            "features": {**manifest["features"], "slash_commands": commands},
        }

    assert without_transport(load(SOCKET)) == without_transport(load(HTTP))


@pytest.mark.parametrize("path", [SOCKET, HTTP], ids=["socket", "http"])
def test_manifest_enables_the_home_tab_and_the_event_the_bot_listens_to(path: Path) -> None:
    manifest = load(path)
    assert manifest["features"]["app_home"] == {
        "home_tab_enabled": True,
        "messages_tab_enabled": True,
        "messages_tab_read_only_enabled": True,
    }
    # Exactly the events a listener handles (handlers/listeners.py).
    listened = set(
        re.findall(r'@app\.event\("([a-z_]+)"\)', (ROOT / "handlers" / "listeners.py").read_text())
    )
    assert listened == {"app_home_opened"}
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == listened


def test_manifest_fits_slack_limits() -> None:
    manifest = load(SOCKET)
    assert len(manifest["display_information"]["name"]) <= 35
    assert len(manifest["display_information"]["description"]) <= 140
    assert manifest["_metadata"] == {"major_version": 1, "minor_version": 1}


def test_manifest_scopes_are_what_the_emulated_workspace_grants() -> None:
    # Tests run against a workspace with exactly these scopes, so a call needing one more
    # fails there with missing_scope, as it would in Slack.
    cv, slack = start_emulators(Seed(projects=1, iterations=1, tags=1, images=1, predictions=1))
    try:
        assert set(slack.scopes) == set(load(SOCKET)["oauth_config"]["scopes"]["bot"])
    finally:
        cv.stop()
        slack.stop()
