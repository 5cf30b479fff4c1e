"""A whole bot on one machine: both emulators and the bot over real HTTP, wired by a Config.

Tests, benchmarks and the sandbox start the same stack, so what they exercise is what runs in
production: the real config loader, the real Training API client over HTTP, the unmodified
slack-sdk client against the Slack emulator, and signed requests into Bolt.

Several Custom Vision resources are several emulators, as they are several endpoints in Azure:
each has its own key, data, rate limit and record of calls. `start_stack(more_resources=...)`
starts one more per name and configures the bot with CUSTOM_VISION_RESOURCES (the first
resource is then named `main`); without it the bot gets the single legacy pair (`default`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import requests

from bot.clock import Clock
from bot.config import Config, load_config
from bot.ids import parse_request_id
from emulators.customvision import CustomVisionEmulator, Faults, Seed
from emulators.slack.driver import SlackDriver
from emulators.slack.records import Message
from emulators.slack.webapi import DEFAULT_SCOPES, SlackEmulator
from handlers.listeners import HOLDING_COMMAND

SIGNING_SECRET = "emulator-signing-secret-0f9c2b"
BOT_TOKEN = "xoxb-emulator-bot-token-5e1d"
TRAINING_KEY = "emulator-training-key-7a3c"
MAIN_RESOURCE = "main"  # the first emulator's name when there are several


def resource_key(name: str) -> str:
    """Return the training key of the emulated resource `name` (the first one's: TRAINING_KEY)."""
    return TRAINING_KEY if name == MAIN_RESOURCE else f"emulator-training-key-{name}-4b8e"


@dataclass(frozen=True)
class Person:
    user_id: str
    name: str


REQUESTER = Person("U0ALICE", "alice")
APPROVER = Person("U0BOB", "bob")
GROUP_APPROVER = Person("U0CAROL", "carol")
STRANGER = Person("U0MALLORY", "mallory")
PRIVACY_GROUP = "S0PRIVACY"
CHANNEL = "C0DSR"  # private channel where requests are made
PUBLIC_CHANNEL = "C0GENERAL"
OUTSIDE_CHANNEL = "C0RANDOM"  # the bot is not a member
AUDIT_CHANNEL = "C0AUDIT"


def named_request(text: str) -> str | None:
    """Return the first request id (R-1001) named in a message, or None."""
    for word in re.split(r"[\s:.,;()*_`]+", text):
        if parse_request_id(word) is not None:
            return word
    return None


def command_answer(slack: SlackEmulator, response: requests.Response, timeout: float) -> str:
    """Return the text a slash command's person reads as its answer.

    That is the acknowledgement's text; or, when the bot acknowledged with its holding answer
    ("Working on it", a loaded machine), the first follow-up through the command's
    response_url, waited for up to `timeout` seconds (the holding text if none came).
    """
    text = str(response.json().get("text", ""))
    if text != HOLDING_COMMAND:
        return text
    body = response.request.body
    form = dict(parse_qsl(body.decode() if isinstance(body, bytes) else str(body)))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = slack.followups(form["response_url"])
        if answers:
            return answers[0]
        time.sleep(0.02)
    return text


@dataclass
class Stack:
    """Running emulators and a running bot; `close()` stops everything."""

    cv: CustomVisionEmulator
    slack: SlackEmulator
    config: Config
    env: dict[str, str] = field(repr=False)  # holds the (test) secrets
    # Every emulated resource by name, `cv` first (only `cv` without more_resources).
    cvs: dict[str, CustomVisionEmulator] = field(default_factory=dict)
    bot: Any = None  # bot.app.Bot when started in-process
    server: Any = None  # handlers.wsgi.HttpServer
    driver: SlackDriver | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _verify_timeout: float = 10.0
    _clock: Clock | None = None
    _rate_tiers: bool = False

    @property
    def bot_url(self) -> str:
        """The bot's Slack endpoint."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/slack/events"

    def command(self, person: Person, text: str, channel: str = CHANNEL) -> requests.Response:
        """Send a signed slash command as `person`; return the HTTP response."""
        assert self.driver is not None
        return self.driver.command(person.user_id, channel, text)

    def request_id(self, response: requests.Response, timeout: float = 30.0) -> str:
        """Return the request id (R-1001) named in a command's answer (`command_answer`)."""
        text = command_answer(self.slack, response, timeout)
        found = named_request(text)
        if found is None:
            raise AssertionError(f"no request id in {text!r}")
        return found

    def status(self, request_id: str) -> str:
        """Return the stored status of a request."""
        assert self.bot is not None
        return str(self.bot.store.get(request_id).status)

    def wait_status(self, request_id: str, *statuses: str, timeout: float = 30.0) -> str:
        """Wait until the request reaches one of `statuses`; return it (raise on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(request_id)
            if status in statuses:
                return status
            time.sleep(0.02)
        raise AssertionError(f"{request_id} stayed {self.status(request_id)}, not {statuses}")

    def wait_delivered(self, timeout: float = 30.0) -> None:
        """Wait until the outbox has nothing pending (every Slack delivery was made)."""
        assert self.bot is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.bot.store.outbox_pending_count() == 0:
                return
            time.sleep(0.02)
        raise AssertionError("Slack deliveries still pending")

    def announcement(self, request_id: str) -> Message:
        """Return the emulator's copy of a request's announcement message."""
        assert self.bot is not None
        ts = self.bot.store.get(request_id).message_ts
        for message in self.slack.messages(CHANNEL) + self.slack.messages(PUBLIC_CHANNEL):
            if message.ts == ts:
                return message
        raise AssertionError(f"no announcement for {request_id}")

    def click(
        self, person: Person, request_id: str, action: str, channel: str = CHANNEL
    ) -> requests.Response:
        """Click one of the announcement's buttons (`approve`, `reject`, `cancel`)."""
        assert self.driver is not None and self.bot is not None
        ts = self.bot.store.get(request_id).message_ts
        assert ts is not None, "the announcement was not posted yet"
        return self.driver.click(person.user_id, channel, ts, f"request.{action}", request_id)

    def restart_bot(self, **env: str) -> None:
        """Stop the bot and start it again on the same database, emulators and clock, with
        `env` overriding the environment (as an admin restarting it with new config does)."""
        self.stop_bot()
        self.start_bot(**env)

    def stop_bot(self) -> None:
        """Stop the bot and its server (the emulators, the database and the clock stay)."""
        assert self.bot is not None and self.server is not None
        for closer in (self.server.close, self.bot.stop):
            closer()
            self._closers.remove(closer)

    def start_bot(self, **env: str) -> None:
        """Start the bot again after `stop_bot`, with `env` overriding the environment."""
        self.env = {**self.env, **env}
        self.config = load_config(self.env)
        _start_bot(self, self._verify_timeout, self._clock, self._rate_tiers)

    def close(self) -> None:
        """Stop the bot, the server and both emulators."""
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()


def bot_env(
    cv: CustomVisionEmulator, slack: SlackEmulator, data_dir: Path, **overrides: str
) -> dict[str, str]:
    """Return the environment a bot needs to talk to these emulators."""
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "CUSTOM_VISION_ENDPOINT": cv.endpoint,
        "CUSTOM_VISION_TRAINING_KEY": TRAINING_KEY,
        "CUSTOM_VISION_TPS": "1000",
        "BOT_DATABASE": str(data_dir / "cvdsr.db"),
        "BOT_WORK_DIR": str(data_dir / "work"),
        "BOT_APPROVERS": f"{APPROVER.user_id},{PRIVACY_GROUP}",
        "BOT_AUDIT_CHANNEL": AUDIT_CHANNEL,
        "PORT": "0",
        # Tests run on a fake clock: a deletion's receipt comes after the first verification
        # window unless a test asks for patience.
        "BOT_VERIFY_MAX_HOURS": "0",
    }
    env.update(overrides)
    return env


def resources_env(
    env: Mapping[str, str], cv: CustomVisionEmulator, more: Mapping[str, CustomVisionEmulator]
) -> dict[str, str]:
    """Return `env` with CUSTOM_VISION_RESOURCES naming `cv` (as `main`) and `more` instead of
    the single pair."""
    changed = {
        k: v
        for k, v in env.items()
        if k not in ("CUSTOM_VISION_ENDPOINT", "CUSTOM_VISION_TRAINING_KEY")
    }
    named = {MAIN_RESOURCE: cv, **more}
    changed["CUSTOM_VISION_RESOURCES"] = ",".join(named)
    for name, emulator in named.items():
        changed[f"CUSTOM_VISION_ENDPOINT_{name.upper()}"] = emulator.endpoint
        changed[f"CUSTOM_VISION_TRAINING_KEY_{name.upper()}"] = resource_key(name)
    return changed


def populate_slack(slack: SlackEmulator) -> None:
    """Add the demo cast: people, a user group, channels with and without the bot."""
    for person in (REQUESTER, APPROVER, GROUP_APPROVER, STRANGER):
        slack.add_user(person.user_id, person.name)
    slack.add_usergroup(PRIVACY_GROUP, "privacy-team", [GROUP_APPROVER.user_id])
    slack.add_channel(CHANNEL, "privacy-requests", is_private=True)
    slack.add_channel(PUBLIC_CHANNEL, "general", is_private=False)
    slack.add_channel(OUTSIDE_CHANNEL, "random", is_private=False, bot_member=False)
    slack.add_channel(AUDIT_CHANNEL, "dsr-audit", is_private=True)


def start_emulators(
    seed: Seed | None = None, faults: Faults | None = None
) -> tuple[CustomVisionEmulator, SlackEmulator]:
    """Start both emulators with the demo data."""
    cv = CustomVisionEmulator(TRAINING_KEY, seed=seed or Seed(), faults=faults).start()
    slack = SlackEmulator(bot_token=BOT_TOKEN, scopes=(*DEFAULT_SCOPES, "files:read")).start()
    # Slack cuts text at 40,000 but asks for under 4,000: hold the bot to the latter, so any
    # test in which the bot says more than fits a message fails with msg_too_long.
    slack.max_text = 4_000
    populate_slack(slack)
    return cv, slack


def start_stack(
    data_dir: Path,
    *,
    seed: Seed | None = None,
    faults: Faults | None = None,
    env: Mapping[str, str] | None = None,
    verify_timeout: float = 10.0,
    start_bot: bool = True,
    rate_tiers: bool = False,
    clock: Clock | None = None,
    more_resources: Mapping[str, Seed] | None = None,
) -> Stack:
    """Start the emulators and, unless `start_bot` is False, the bot in-process over HTTP.

    With `rate_tiers`, Slack's rate limits are on and the bot spends Slack's budgets as in
    production. Without, neither limits (the tests of everything else stay fast): the same
    pairing of a kinder Slack with a bot that need not pace itself.

    `clock` (a FakeClock in tests) is the bot's time: approval windows, expiry, leases.

    `more_resources` (name -> Seed) starts one more Custom Vision emulator per name, each with
    its own key and a copy of `faults` (so its own rate limit).
    """
    cv, slack = start_emulators(seed, faults)
    more = {
        name: CustomVisionEmulator(
            resource_key(name), seed=more_seed, faults=replace(faults) if faults else None
        ).start()
        for name, more_seed in (more_resources or {}).items()
    }
    if rate_tiers:
        slack.enable_rate_tiers()
    full_env = bot_env(cv, slack, data_dir)
    if more:
        full_env = resources_env(full_env, cv, more)
    full_env.update(env or {})
    stack = Stack(
        cv=cv,
        slack=slack,
        config=load_config(full_env),
        env=full_env,
        cvs={MAIN_RESOURCE if more else "default": cv, **more},
    )
    stack._closers.extend([cv.stop, slack.stop, *(e.stop for e in more.values())])
    if start_bot:
        _start_bot(stack, verify_timeout, clock, rate_tiers)
    return stack


def _start_bot(stack: Stack, verify_timeout: float, clock: Clock | None, rate_tiers: bool) -> None:
    from bot.app import build_bot
    from handlers.outbox import Pacer
    from handlers.wsgi import HttpServer

    stack._verify_timeout, stack._clock, stack._rate_tiers = verify_timeout, clock, rate_tiers
    stack.bot = build_bot(stack.config, verify_timeout=verify_timeout, clock=clock)
    if not rate_tiers:
        stack.bot.deliverer.pacer = Pacer.unlimited()
    stack.bot.start()
    stack._closers.append(stack.bot.stop)
    stack.server = HttpServer(stack.bot, host="127.0.0.1", port=0).start()
    stack._closers.append(stack.server.close)
    stack.driver = SlackDriver(stack.bot_url, SIGNING_SECRET, stack.slack, command="/cv")
