"""Configuration, read once from the environment (and a `.env` file) into a frozen dataclass.

`load_config` reports every missing or malformed variable at once, each with a hint. Secrets
are wrapped in `Secret`, whose repr and str never show the value. `.env.example` lists every
variable read here (tests hold the two together).

Custom Vision resources: `CUSTOM_VISION_RESOURCES=prod,dev` names several, each read from
`CUSTOM_VISION_ENDPOINT_<NAME>`, `CUSTOM_VISION_TRAINING_KEY_<NAME>` and optionally
`CUSTOM_VISION_TPS_<NAME>` (NAME upper-cased). Without it, the single
`CUSTOM_VISION_ENDPOINT`/`CUSTOM_VISION_TRAINING_KEY` pair is the resource named `default`.
`CUSTOM_VISION_TPS` is every resource's cap unless its own variable says otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dotenv import dotenv_values

_SLACK_ID = re.compile(r"^[UWS][A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
# A resource's name is a suffix of variable names, so only letters, digits and underscores.
_RESOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
DEFAULT_RESOURCE = "default"


@dataclass(frozen=True)
class Bounds:
    """The documented range of a numeric setting (inclusive at both ends)."""

    low: float
    high: float
    unit: str
    whole: bool = False  # a whole number (int) instead of a decimal (float)

    @property
    def text(self) -> str:
        """Return the range as the README and .env.example write it, e.g. `1 to 1000`."""
        return f"{self.low:g} to {self.high:g}"


# Every numeric setting and its range: the one place the README table and .env.example quote
# (tests hold them together). The ends are what the bot is tested with and what still makes
# sense: beyond them a value is a typo or breaks something (a TTL of 1e9 hours overflows every
# date the bot computes).
NUMBERS: dict[str, Bounds] = {
    # Azure allows 10 calls/s per resource; more is only for the local emulators.
    "CUSTOM_VISION_TPS": Bounds(0.1, 1000, "calls per second"),
    # Art. 12(3) GDPR gives a month to answer; sub-minute values are for tests.
    "BOT_APPROVAL_TTL_HOURS": Bounds(0.0001, 720, "hours"),
    "BOT_REQUIRED_APPROVALS": Bounds(1, 10, "approvers", whole=True),
    # Slack's limit for one file is 1 GB.
    "BOT_MAX_FILE_MB": Bounds(1, 1000, "MB", whole=True),
    "PORT": Bounds(0, 65535, "TCP port, 0: any free port", whole=True),
    "BOT_WORKERS": Bounds(1, 32, "workers", whole=True),
    "BOT_DOWNLOAD_CONCURRENCY": Bounds(1, 64, "parallel downloads", whole=True),
    "BOT_HEALTH_MAX_QUEUE_SECONDS": Bounds(1, 86400, "seconds", whole=True),
    "BOT_JOB_LEASE_SECONDS": Bounds(5, 3600, "seconds", whole=True),
    "BOT_REMINDER_HOUR_UTC": Bounds(0, 23, "hour of the day, UTC", whole=True),
    # Custom Vision empties trained iterations after a 202 with no documented delay; a week
    # covers any outage the bot should wait out, 0 gives the receipt after the first window.
    "BOT_VERIFY_MAX_HOURS": Bounds(0, 168, "hours", whole=True),
}


class Secret:
    """A secret string: `reveal()` gives the value; repr and str never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value (only for the one call that needs it)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class Resource:
    """One Custom Vision training resource: its name in commands, endpoint, key and rate cap."""

    name: str
    endpoint: str = ""
    training_key: Secret = field(default_factory=lambda: Secret(""))
    tps: float = 10.0
    # What its variables end with: `_PROD` for a resource of CUSTOM_VISION_RESOURCES, empty
    # for the legacy single pair (so messages name the variable to fix).
    suffix: str = ""

    @property
    def endpoint_variable(self) -> str:
        """Return the name of the variable holding this resource's endpoint."""
        return f"CUSTOM_VISION_ENDPOINT{self.suffix}"

    @property
    def key_variable(self) -> str:
        """Return the name of the variable holding this resource's training key."""
        return f"CUSTOM_VISION_TRAINING_KEY{self.suffix}"

    def __repr__(self) -> str:
        return f"Resource(name={self.name!r}, endpoint={self.endpoint!r}, tps={self.tps:g})"

    @property
    def host(self) -> str:
        """Return the endpoint's host name (what messages show), or `(no endpoint)`."""
        return urlparse(self.endpoint).netloc or "(no endpoint)"


@dataclass(frozen=True)
class Config:
    """Everything the bot reads from its environment."""

    slack_bot_token: Secret = field(default_factory=lambda: Secret(""))
    slack_signing_secret: Secret = field(default_factory=lambda: Secret(""))
    slack_app_token: Secret = field(default_factory=lambda: Secret(""))
    slack_api_url: str = "https://slack.com/api/"
    resources: tuple[Resource, ...] = (Resource(DEFAULT_RESOURCE),)
    custom_vision_tps: float = 10.0
    bot_command: str = "/cv"
    database: Path = Path("./data/cvdsr.db")
    work_dir: Path = Path("./data/work")
    approvers: tuple[str, ...] = ()
    requesters: tuple[str, ...] = ()
    allowed_channels: tuple[str, ...] = ()
    audit_channel: str | None = None
    approval_ttl_hours: float = 24.0
    verify_max_hours: int = 24
    required_approvals: int = 1
    allow_public_exports: bool = False
    allow_shared_exports: bool = False
    max_file_mb: int = 1000
    port: int = 3000
    workers: int = 2
    download_concurrency: int = 16
    health_max_queue_seconds: int = 900
    job_lease_seconds: int = 60
    public_holidays: frozenset[date] = frozenset()
    reminder_hour_utc: int = 8

    @property
    def socket_mode(self) -> bool:
        """True when an app-level token is set: Socket Mode instead of HTTP."""
        return bool(self.slack_app_token)

    @property
    def max_file_bytes(self) -> int:
        """Largest single file the bot uploads, in bytes."""
        return self.max_file_mb * 1024 * 1024

    def secrets(self) -> tuple[str, ...]:
        """Return every secret value (for redaction and for tests that scan for leaks)."""
        values = (
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            *(resource.training_key for resource in self.resources),
        )
        return tuple(s.reveal() for s in values if s)

    def resource(self, name: str) -> Resource | None:
        """Return the resource called `name` (any case), or None."""
        return next((r for r in self.resources if r.name.lower() == name.lower()), None)


def read_environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """Return the process environment over the values of `env_file` (the environment wins)."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str = "") -> str:
        return self.env.get(name, "").strip() or default

    def parsed(self, name: str, default: Any, parse: Callable[[str], Any], hint: str) -> Any:
        raw = self.text(name)
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is malformed: {hint}")
            return default

    def number(self, name: str, default: float) -> Any:
        """Return the numeric setting `name` within its NUMBERS range, else note a problem."""
        bounds = NUMBERS[name]
        raw = self.text(name)
        if not raw:
            return default
        expected = f"expected {'a whole number' if bounds.whole else 'a number'} from " + (
            f"{bounds.text} ({bounds.unit})"
        )
        try:
            value: float = int(raw) if bounds.whole else float(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is malformed: {expected}")
            return default
        if value != value:  # nan
            self.problems.append(f"{name}={raw!r} is malformed: {expected}")
            return default
        if not bounds.low <= value <= bounds.high:
            self.problems.append(f"{name}={raw!r} is out of range: {expected}")
            return default
        return value

    def ids(self, name: str, pattern: re.Pattern[str], hint: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(p.strip() for p in self.text(name).split(",") if p.strip()))
        bad = [item for item in items if not pattern.match(item)]
        if bad:
            self.problems.append(f"{name} has malformed ids {', '.join(bad)}: {hint}")
        return tuple(item for item in items if pattern.match(item))

    def dates(self, name: str) -> frozenset[date]:
        """Return the comma-separated ISO dates of `name`; note every malformed one at once."""
        days: set[date] = set()
        bad: list[str] = []
        for item in (part.strip() for part in self.text(name).split(",")):
            if not item:
                continue
            try:
                if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", item):
                    raise ValueError(item)
                days.add(date.fromisoformat(item))
            except ValueError:
                bad.append(repr(item))
        if bad:
            self.problems.append(
                f"{name} has malformed dates {', '.join(bad)}: expected ISO dates like"
                " 2026-12-25, comma-separated"
            )
        return frozenset(days)


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.query:
        raise ValueError(raw)
    return raw


def load_config(env: Mapping[str, str], *, serve: bool = True) -> Config:
    """Return the Config read from `env`; raise ConfigError listing every problem.

    With `serve=False` the Slack credentials are optional (offline commands such as
    `audit verify` need only the database).
    """
    from bot.errors import ConfigError

    r = _Reader(env)
    bot_token = r.text("SLACK_BOT_TOKEN")
    signing_secret = r.text("SLACK_SIGNING_SECRET")
    app_token = r.text("SLACK_APP_TOKEN")
    if serve:
        if not bot_token:
            r.problems.append(
                "SLACK_BOT_TOKEN is missing: copy the Bot User OAuth Token (xoxb-...)"
            )
        elif not bot_token.startswith("xoxb-"):
            r.problems.append("SLACK_BOT_TOKEN is malformed: a bot token starts with xoxb-")
        if app_token and not app_token.startswith("xapp-"):
            r.problems.append("SLACK_APP_TOKEN is malformed: an app-level token starts with xapp-")
        if not app_token and not signing_secret:
            r.problems.append(
                "SLACK_SIGNING_SECRET is missing: HTTP mode needs it (Basic Information page), "
                "or set SLACK_APP_TOKEN for Socket Mode"
            )
    tps = r.number("CUSTOM_VISION_TPS", 10.0)
    resources = _resources(r, tps, serve=serve)
    api_url = r.parsed(
        "SLACK_API_URL",
        "https://slack.com/api/",
        _url,
        "expected a URL like https://slack.com/api/",
    )
    if not api_url.endswith("/"):
        api_url += "/"
    command = r.text("BOT_COMMAND", "/cv")
    if not re.match(r"^/[a-z0-9_-]{1,31}$", command):
        r.problems.append(
            f"BOT_COMMAND={command!r} is malformed: expected a slash command like /cv"
        )
    user_hint = "expected user ids (U..., W...) or user-group ids (S...), comma-separated"
    config = Config(
        slack_bot_token=Secret(bot_token),
        slack_signing_secret=Secret(signing_secret),
        slack_app_token=Secret(app_token),
        slack_api_url=api_url,
        resources=resources,
        custom_vision_tps=tps,
        bot_command=command,
        database=Path(r.text("BOT_DATABASE", "./data/cvdsr.db")),
        work_dir=Path(r.text("BOT_WORK_DIR", "./data/work")),
        approvers=r.ids("BOT_APPROVERS", _SLACK_ID, user_hint),
        requesters=r.ids("BOT_REQUESTERS", _SLACK_ID, user_hint),
        allowed_channels=r.ids(
            "BOT_ALLOWED_CHANNELS",
            _CHANNEL_ID,
            "expected channel ids (C..., G...), comma-separated",
        ),
        audit_channel=r.parsed(
            "BOT_AUDIT_CHANNEL", None, _channel_id, "expected one channel id (C... or G...)"
        ),
        approval_ttl_hours=r.number("BOT_APPROVAL_TTL_HOURS", 24.0),
        verify_max_hours=r.number("BOT_VERIFY_MAX_HOURS", 24),
        required_approvals=r.number("BOT_REQUIRED_APPROVALS", 1),
        allow_public_exports=r.parsed(
            "BOT_ALLOW_PUBLIC_EXPORTS", False, _boolean, "expected true or false"
        ),
        allow_shared_exports=r.parsed(
            "BOT_ALLOW_SHARED_CHANNEL_EXPORTS", False, _boolean, "expected true or false"
        ),
        max_file_mb=r.number("BOT_MAX_FILE_MB", 1000),
        port=r.number("PORT", 3000),
        workers=r.number("BOT_WORKERS", 2),
        download_concurrency=r.number("BOT_DOWNLOAD_CONCURRENCY", 16),
        health_max_queue_seconds=r.number("BOT_HEALTH_MAX_QUEUE_SECONDS", 900),
        job_lease_seconds=r.number("BOT_JOB_LEASE_SECONDS", 60),
        public_holidays=r.dates("BOT_PUBLIC_HOLIDAYS"),
        reminder_hour_utc=r.number("BOT_REMINDER_HOUR_UTC", 8),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config


def _channel_id(raw: str) -> str:
    if not _CHANNEL_ID.match(raw):
        raise ValueError(raw)
    return raw


_ENDPOINT_HINT = "expected https://<name>.cognitiveservices.azure.com"


def _resource(r: _Reader, name: str, suffix: str, tps: float, *, serve: bool) -> Resource:
    """Return the resource read from the variables ending in `suffix`; note its problems."""
    endpoint_var = Resource(name, suffix=suffix).endpoint_variable
    key_var = Resource(name, suffix=suffix).key_variable
    endpoint = r.text(endpoint_var).rstrip("/")
    key = r.text(key_var)
    if serve and not endpoint:
        r.problems.append(
            f"{endpoint_var} is missing: the resource endpoint, "
            "e.g. https://<name>.cognitiveservices.azure.com"
        )
    if serve and not key:
        r.problems.append(f"{key_var} is missing: Azure portal > resource > Keys and Endpoint")
    if endpoint:
        try:
            _url(endpoint)
        except ValueError:
            r.problems.append(f"{endpoint_var}={endpoint!r} is malformed: {_ENDPOINT_HINT}")
            endpoint = ""
    if suffix:
        tps_var = f"CUSTOM_VISION_TPS{suffix}"
        bounds = NUMBERS["CUSTOM_VISION_TPS"]
        raw = r.text(tps_var)
        if raw:
            try:
                own = float(raw)
                if not bounds.low <= own <= bounds.high:  # also refuses nan
                    raise ValueError(raw)
                tps = own
            except ValueError:
                r.problems.append(
                    f"{tps_var}={raw!r} is malformed: expected a number from {bounds.text} "
                    f"({bounds.unit})"
                )
    return Resource(name, endpoint, Secret(key), tps, suffix)


def _resources(r: _Reader, tps: float, *, serve: bool) -> tuple[Resource, ...]:
    """Return the configured resources (the legacy single pair is `default`); note problems."""
    listed = r.text("CUSTOM_VISION_RESOURCES")
    if not listed:
        return (_resource(r, DEFAULT_RESOURCE, "", tps, serve=serve),)
    for legacy in ("CUSTOM_VISION_ENDPOINT", "CUSTOM_VISION_TRAINING_KEY"):
        if r.text(legacy):
            r.problems.append(
                f"{legacy} is set but CUSTOM_VISION_RESOURCES is too: move it to "
                f"{legacy}_<NAME> of the resource it belongs to"
            )
    names = [part.strip() for part in listed.split(",")]
    bad = [repr(n) for n in names if not _RESOURCE_NAME.match(n)]
    if bad:
        r.problems.append(
            f"CUSTOM_VISION_RESOURCES has malformed names {', '.join(bad)}: expected names of "
            "letters, digits and underscores (starting with a letter, at most 32), "
            "comma-separated, e.g. prod,dev"
        )
    seen: dict[str, str] = {}
    resources: list[Resource] = []
    for name in (n for n in names if _RESOURCE_NAME.match(n)):
        if name.lower() in seen:
            r.problems.append(f"CUSTOM_VISION_RESOURCES names {name!r} twice (names ignore case)")
            continue
        seen[name.lower()] = name
        resources.append(_resource(r, name, f"_{name.upper()}", tps, serve=serve))
    by_endpoint: dict[str, str] = {}
    for resource in resources:
        if not resource.endpoint:
            continue
        other = by_endpoint.setdefault(resource.endpoint.lower(), resource.name)
        if other != resource.name:
            r.problems.append(
                f"{resource.endpoint_variable} is the endpoint of resource "
                f"{other!r} too: each resource has its own endpoint"
            )
    return tuple(resources)
