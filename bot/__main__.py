"""Command line: `python -m bot run | serve | sandbox | check | audit verify | trial`.

`run` is the README's main job: the real bot when credentials are configured, otherwise the
sandbox (local emulators, no credentials).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bot.config import Config, load_config, read_environment
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.wording import count

if TYPE_CHECKING:
    from bot.app import Bot
    from bot.checks import Check

log = logging.getLogger("bot")


def _lock(database: Path) -> IO[bytes]:
    """Hold an exclusive lock on the database file itself: one bot process per database.

    The lock belongs to the file (its inode), not to a name, so every path to it meets it: a
    symlink, a hard link, a relative or `..` path, another letter case on a case-insensitive
    file system. flock(2) locks are separate from SQLite's own (fcntl) locks on Linux and end
    with the process, so a crashed bot never blocks its restart. The handle stays open until
    the database is closed: closing a descriptor of the file would drop SQLite's locks.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    handle = open(database, "ab")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            [
                f"another bot process is using {database} (through this or another path); stop it "
                "first"
            ]
        ) from None
    return handle


CHECK_ROUNDS = 3
CHECK_PAUSE = 2.0  # seconds, times the round number


def _start_up_failures(config: Config, bot: Bot, stop: threading.Event) -> list[Check]:
    """Return the start-up checks that failed in each of up to CHECK_ROUNDS rounds.

    A restart during a network blip or while Custom Vision throttles must not keep the bot
    (and the jobs it resumes) down, so a failure has to persist a few seconds to count.
    """
    from bot.checks import run_checks
    from handlers.checks import slack_checks

    for number in range(1, CHECK_ROUNDS + 1):
        failures = [c for c in run_checks(config, slack_checks, db=bot.db) if not c.ok]
        if not failures or number == CHECK_ROUNDS or stop.wait(CHECK_PAUSE * number):
            return failures
        log.warning(
            "start-up check failed (%s); checking again", ", ".join(c.name for c in failures)
        )
    return []


def serve(config: Config, *, stop: threading.Event | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT (or `stop`); return the exit code."""
    from bot.app import build_bot, socket_mode
    from handlers.wsgi import HttpServer

    lock = _lock(config.database)
    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, lambda *_: stop.set())
    bot = build_bot(config)
    try:
        failures = _start_up_failures(config, bot, stop)
        if failures:
            log.error("refusing to start; fix these first:")
            for check in failures:
                log.error("  %s: %s — %s", check.name, check.detail, check.fix)
            return 2
        bot.start()
        if config.socket_mode:
            handler = socket_mode(bot)
            handler.connect()  # type: ignore[no-untyped-call]
            log.info("serving %s over Socket Mode", config.bot_command)
            stop.wait()
            handler.close()  # type: ignore[no-untyped-call]
        else:
            server = HttpServer(bot, port=config.port).start()
            log.info(
                "serving %s on http://0.0.0.0:%s/slack/events", config.bot_command, server.port
            )
            stop.wait()
            server.close()
        log.info("stopping: waiting for running jobs to reach a checkpoint")
        return 0
    finally:
        bot.stop()
        lock.close()


def read_export(path: Path) -> list[dict[str, object]]:
    """Return the messages of a Slack export of one channel, oldest first.

    `path` is the channel's folder of a Slack data export (one JSON file per day), one such
    file, or a JSON file holding a list of messages or {"messages": [...]} (what
    conversations.history returns). Raises ValueError for anything else.
    """
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    messages: list[dict[str, object]] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(
                f"{file} is not JSON: a witness is Slack's JSON export of the audit channel "
                "(plain text cannot tell the bot's lines from anyone else's)"
            ) from None
        found = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(found, list):
            raise ValueError(f"{file} holds no list of Slack messages")
        messages.extend(m for m in found if isinstance(m, dict))
    return sorted(messages, key=lambda m: float(str(m.get("ts") or 0)))


MAX_IGNORED_SHOWN = 50


def audit_verify(config: Config, witness: Path | None = None, bot: str | None = None) -> int:
    """Verify the audit chain of the database file offline; return 0 when intact.

    With `witness` (an export of BOT_AUDIT_CHANNEL), the chain must also match every line
    the bot posted there, as Slack kept it, which catches a rewritten or truncated database.
    Lines anyone else posted (or edited, or replied in a thread) are listed and ignored; `bot`
    pins the bot's user or bot id (default: the one app whose messages carry audit lines).
    """
    from bot import audit
    from bot.db import AuditFile

    if not config.database.exists():
        print(f"No database at {config.database}.", file=sys.stderr)
        return 2
    log_file = AuditFile(config.database)
    try:
        result = log_file.verify()
        if result.ok and witness is not None:
            try:
                seen = audit.read_witness(read_export(witness), bot)
            except (OSError, ValueError) as exc:
                print(f"Cannot use the witness {witness}: {exc}", file=sys.stderr)
                return 2
            result = log_file.check_against_witness(seen.lines)
            print(f"Checked against {len(seen.lines)} lines posted by {seen.bot} in {witness}.")
            if seen.ignored:
                print(f"Ignored {count(len(seen.ignored), 'line')} that read like audit lines:")
            for line in seen.ignored[:MAX_IGNORED_SHOWN]:
                print(f"  ts {line.ts} by {line.author}: {line.reason}: {line.text[:80]!r}")
            if len(seen.ignored) > MAX_IGNORED_SHOWN:
                print(f"  … and {len(seen.ignored) - MAX_IGNORED_SHOWN} more")
    finally:
        log_file.close()
    print(result.summary())
    return 0 if result.ok else 1


def trial(config: Config, args: argparse.Namespace) -> int:
    """Run the live trial (bot.trial) on the configured resource; return the exit code."""
    from bot.trial import run_trial, summary

    resource = config.resource(args.resource) if args.resource else config.resources[0]
    if resource is None:
        names = ", ".join(r.name for r in config.resources)
        raise ConfigError([f"--resource {args.resource} is not configured (configured: {names})"])
    problems = [
        f"{name} is missing: the trial needs the Custom Vision resource to try"
        for name, value in (
            (resource.endpoint_variable, resource.endpoint),
            (resource.key_variable, resource.training_key.reveal()),
        )
        if not value
    ]
    if args.train and not args.prediction_resource_id:
        problems.append(
            "--train needs --prediction-resource-id (the prediction resource's Resource ID, "
            "Azure portal > prediction resource > Properties) to publish the iteration"
        )
    if problems:
        raise ConfigError(problems)
    output = args.output / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"Live trial: a scratch project on {resource.host}; output in {output}")
    try:
        report = run_trial(
            resource.endpoint,
            resource.training_key.reveal(),
            output,
            train=args.train,
            prediction_resource_id=args.prediction_resource_id,
            reuse_delay=args.reuse_delay,
            verify_timeout=args.verify_timeout,
            poll=args.poll,
            tps=resource.tps,
        )
    except Exception as exc:
        written = output / "trial-report.json"
        if not written.exists():
            print(f"The trial could not start: {exc}", file=sys.stderr)
            return 1
        report = json.loads(written.read_text(encoding="utf-8"))
    print(summary(report))
    print(f"Report: {output / 'trial-report.json'} (no keys, no image links). Please attach it")
    print("to a GitHub issue of cv-dsr-bot titled 'Live trial report' (see README).")
    return 1 if report["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--env-file", type=Path, default=Path(".env"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the real bot with credentials, else the sandbox")
    sub.add_parser("serve", help="serve Slack (Socket Mode with SLACK_APP_TOKEN, else HTTP)")
    sandbox = sub.add_parser("sandbox", help="a scripted demo against local emulators")
    sandbox.add_argument("--interactive", action="store_true")
    sandbox.add_argument("--output", type=Path, default=Path("sandbox-output"))
    sub.add_parser("check", help="verify configuration, Slack, Custom Vision and the database")
    audit_parser = sub.add_parser("audit", help="audit log tools")
    audit_parser.add_argument("action", choices=("verify",))
    audit_parser.add_argument(
        "--witness",
        type=Path,
        help="Slack's JSON export of the audit channel (its folder, or one file) to check against",
    )
    audit_parser.add_argument(
        "--bot-user",
        metavar="ID",
        help="the bot's user id (U...) or bot id (B...) whose lines count (default: the only app "
        "that posted audit lines)",
    )
    from bot.trial import TRAIN_COST

    trial_parser = sub.add_parser(
        "trial",
        help="try the bot on your Custom Vision resource in a scratch project it then deletes",
        description="Creates a scratch project (cv-dsr-bot-trial-<time>-<random>), uploads 20 "
        "generated images, runs the bot's export and deletion on it, measures Azure's timing "
        "and error codes, writes trial-report.json and deletes the project. Needs only "
        "CUSTOM_VISION_ENDPOINT and CUSTOM_VISION_TRAINING_KEY; touches no other project. "
        "Without --train it costs nothing but about 100 API calls. " + TRAIN_COST,
    )
    trial_parser.add_argument("--output", type=Path, default=Path("trial-output"))
    trial_parser.add_argument("--train", action="store_true", help=TRAIN_COST)
    trial_parser.add_argument(
        "--resource",
        metavar="NAME",
        help="which of CUSTOM_VISION_RESOURCES to try (default: the first, or the single pair)",
    )
    trial_parser.add_argument("--prediction-resource-id", metavar="ID")
    trial_parser.add_argument(
        "--reuse-delay",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="download a link again this long after it was listed (default 5)",
    )
    trial_parser.add_argument(
        "--verify-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for deleted images to disappear (default 600)",
    )
    trial_parser.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    env = read_environment(args.env_file)
    command = args.command
    if command == "run":
        # Any credential means a real deployment (its problems are reported, not sandboxed).
        has_credentials = any(
            env.get(name)
            for name in ("SLACK_BOT_TOKEN", "CUSTOM_VISION_TRAINING_KEY", "CUSTOM_VISION_RESOURCES")
        )
        command = "serve" if has_credentials else "sandbox"
        args.interactive, args.output = False, Path("sandbox-output")
    try:
        if command == "sandbox":
            from emulators.sandbox import run_sandbox

            setup_logging(args.log_format)
            logging.getLogger().setLevel(logging.WARNING)
            return run_sandbox(output=args.output, interactive=args.interactive)
        config = load_config(env, serve=command in {"serve", "check"})
        setup_logging(args.log_format, config.secrets())
        if command == "serve":
            return serve(config)
        if command == "trial":
            return trial(config, args)
        if command == "check":
            from bot.checks import print_checks
            from handlers.checks import slack_checks

            return print_checks(config, slack_checks)
        return audit_verify(config, args.witness, args.bot_user)
    except ConfigError as exc:
        print(exc.user_message, file=sys.stderr)
        print("See .env.example and README.md (Configuration).", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
