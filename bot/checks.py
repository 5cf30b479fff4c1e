"""Self-check: can this configuration serve? One `Check` per thing an admin can get wrong.

Not pure: it calls Custom Vision (GetProjects) and touches the database and the work folder.
Slack's checks (read-only Web API methods) live at the Slack edge, `handlers.checks`, and are
passed in to `run_checks`. Each check catches the failures it expects and turns them into a
`Check` whose `fix` says what to do; nothing here changes anything (the database write is
rolled back, the probe file removed). No check ever shows a secret: every text is scrubbed of
the configured secrets before it leaves `run_checks`.

Custom Vision is called through the real `TrainingClient`, with short timeouts and one retry so
a wrong endpoint fails in seconds, not minutes.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO, TypeAlias

from bot.config import Config, Resource
from bot.db import Database
from bot.errors import MalformedResponse, Throttled, TrainingApiError, TransportError, Unauthorized
from bot.training import TrainingClient
from bot.wording import count

TRAINING_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """One verified fact about the configuration; `fix` says what to do when not `ok`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """Return the line `check` prints: `✓ name — detail` or `✗ name — detail. Fix: ...`."""
        if self.ok:
            return f"✓ {self.name} — {self.detail}"
        return f"✗ {self.name} — {self.detail.rstrip('.')}. Fix: {self.fix}"


# -- the checks ---------------------------------------------------------------------------------


def check_configuration(config: Config) -> Check:
    """Return what the validated configuration means (load_config already refused bad values)."""
    mode = (
        "Socket Mode (SLACK_APP_TOKEN set)"
        if config.socket_mode
        else f"HTTP mode (POST /slack/events on port {config.port})"
    )
    users = sum(1 for a in config.approvers if a[0] in "UW")
    groups = len(config.approvers) - users
    if config.approvers:
        approvers = (
            f"{count(len(config.approvers), 'approver')} ({count(users, 'user')}, "
            f"{count(groups, 'user group')}), {config.required_approvals} needed per deletion"
        )
    else:
        approvers = "no approvers: deletions are disabled until BOT_APPROVERS is set"
    channels = (
        f"requests in {count(len(config.allowed_channels), 'channel')}"
        if config.allowed_channels
        else "requests in any channel the bot is in"
    )
    audit_channel = (
        f"audit mirrored to {config.audit_channel}" if config.audit_channel else "no audit channel"
    )
    return Check(
        "configuration",
        True,
        f"{mode}, command {config.bot_command}, {approvers}, {channels}, {audit_channel}",
    )


def check_training_keys(config: Config) -> list[Check]:
    """Return one check per configured Custom Vision resource."""
    return [check_training_key(resource) for resource in config.resources]


def check_training_key(resource: Resource) -> Check:
    """Return whether a resource's key works against its endpoint (GetProjects, read-only)."""
    host = resource.host
    endpoint_var, key_var = resource.endpoint_variable, resource.key_variable
    name = "Custom Vision training key" + (f" ({resource.name})" if resource.suffix else "")
    try:
        # Its own client, not the bot's: one retry and short timeouts, so a wrong endpoint
        # fails the check in seconds instead of after the bot's long backoff.
        client = TrainingClient(
            resource.endpoint,
            resource.training_key.reveal(),
            tps=resource.tps,
            timeout=TRAINING_TIMEOUT,
            max_attempts=2,
            backoff_base=0.2,
            backoff_cap=1.0,
        )
    except ValueError as exc:
        return Check(name, False, str(exc), f"check {endpoint_var} and the key's value")
    try:
        projects = client.get_projects()
    except Unauthorized:
        return Check(
            name,
            False,
            f"{host} refused the key (HTTP 401)",
            f"check {key_var} and that {endpoint_var} is the endpoint "
            "of the same resource (Azure portal > the training resource > Keys and Endpoint)",
        )
    except TransportError as exc:
        return Check(
            name,
            False,
            f"could not reach {host}: {exc.user_message}",
            f"check {endpoint_var} (https://<name>.cognitiveservices.azure.com) and "
            "that this machine can reach it (proxy, firewall, private endpoint)",
        )
    except Throttled:
        return Check(
            name, False, f"{host} kept answering 429", "run the check again in a few minutes"
        )
    except MalformedResponse as exc:
        return Check(
            name,
            False,
            exc.user_message,
            f"check {endpoint_var}: it must be the resource endpoint, without a path",
        )
    except TrainingApiError as exc:
        return Check(name, False, exc.user_message, "check the resource in the Azure portal")
    finally:
        client.close()
    return Check(name, True, f"accepted by {host}: {count(len(projects), 'project')} (GetProjects)")


@contextmanager
def _database(config: Config, db: Database | None) -> Iterator[Database]:
    if db is not None:
        yield db
        return
    db = Database(config.database)
    try:
        yield db
    finally:
        db.close()


def check_database(config: Config, db: Database | None = None) -> list[Check]:
    """Return the database check (opens, migrates, takes a write lock) and the audit chain's."""
    name = "database"
    fix = (
        f"make the folder of BOT_DATABASE ({config.database.parent}) writable by the bot's "
        "user, and the file too if it exists"
    )
    try:
        with _database(config, db) as opened:
            version, verification = opened.probe()
    except (sqlite3.Error, OSError) as exc:
        return [Check(name, False, f"{config.database}: {exc}", fix)]
    checks = [Check(name, True, f"{config.database} is writable (schema v{version})")]
    if verification.ok:
        checks.append(Check("audit log", True, verification.summary()))
    else:
        checks.append(
            Check(
                "audit log",
                False,
                verification.summary(),
                "the log was changed outside the bot: keep a copy of the database for the "
                "investigation and compare it with the audit channel's mirror (README, Audit)",
            )
        )
    return checks


def check_work_dir(config: Config) -> Check:
    """Return whether the work folder can hold export packages (writable; free space shown)."""
    name = "work folder"
    try:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=config.work_dir, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(config.work_dir).free
    except OSError as exc:
        return Check(
            name,
            False,
            f"{config.work_dir}: {exc.strerror or type(exc).__name__}",
            f"make BOT_WORK_DIR ({config.work_dir}) writable by the bot's user",
        )
    return Check(name, True, f"{config.work_dir} is writable, {free / 1e9:.1f} GB free")


SlackChecks: TypeAlias = Callable[[Config], list[Check]]


def run_checks(config: Config, slack: SlackChecks, *, db: Database | None = None) -> list[Check]:
    """Return every check in order (Slack's from `slack`); never raises for a known failure.

    With `db` (serve's start-up: the running bot's), that open database is checked instead of
    opening another.
    """
    checks = [check_configuration(config)]
    checks += slack(config)
    checks.extend(check_training_keys(config))
    checks += check_database(config, db)
    checks.append(check_work_dir(config))
    scrub = _scrubber(config.secrets())
    return [replace(c, detail=scrub(c.detail), fix=scrub(c.fix)) for c in checks]


def _scrubber(secrets: tuple[str, ...]) -> Callable[[str], str]:
    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "[redacted]")
        return text

    return scrub


def print_checks(config: Config, slack: SlackChecks, *, stream: IO[str] | None = None) -> int:
    """Print one line per check; return 0 when all passed, else 1."""
    out = stream or sys.stdout
    checks = run_checks(config, slack)
    for check in checks:
        print(check.line(), file=out)
    failed = sum(1 for c in checks if not c.ok)
    if failed:
        print(f"{count(failed, 'check')} failed.", file=out)
        return 1
    print(f"All {len(checks)} checks passed.", file=out)
    return 0
