"""What every benchmark needs: emulators, the bot as its own process, waits, a load generator.

I/O module. The emulators run in this process (emulators.stack.start_emulators, the same
demo cast the tests use); the bot runs as `python -m bot serve` in a child process with the
environment of emulators.stack.bot_env, so its peak RSS (VmHWM) is its own and it talks to
the emulators over loopback HTTP exactly as it would talk to Slack and Azure. The bench watches
the bot through its surfaces (signed requests in, emulator records out) and reads request
states from the bot's SQLite file read-only (WAL lets a reader in beside the writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

import requests

import bot
from bench.load import Answer
from bench.runs import Scale
from bot.clock import parse_iso
from bot.ids import format_request_id, parse_request_id
from bot.lifecycle import TERMINAL
from emulators.customvision import Call, CustomVisionEmulator, Faults, Seed
from emulators.slack.driver import SlackDriver
from emulators.slack.webapi import SlackEmulator
from emulators.stack import (
    CHANNEL,
    SIGNING_SECRET,
    bot_env,
    command_answer,
    named_request,
    start_emulators,
)

BENCH_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the bench package
CODE_ROOT = Path(bot.__file__).resolve().parent.parent  # the folder holding the bot package
SERVING = re.compile(r"serving \S+ on http://[0-9.]+:(\d+)/slack/events")
READY_TIMEOUT = 60.0  # start-up: imports, self-checks, first listen
STOP_TIMEOUT = 30.0
# Environment variables a child may inherit; everything else (SLACK_*, CUSTOM_VISION_*, ...)
# comes from bot_env, so a developer's real credentials can never reach a benchmark.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "PYTHONHASHSEED")


# The full-size project (emulators.cvdata.Seed.full_size) at each scale: `make bench-full`
# seeds the S0 maximum, `make bench` 2% of it (the same 20 iterations), the smoke run
# a few hundred images.
FULL_SIZE_SCALE: dict[Scale, float] = {"smoke": 0.002, "bench": 0.02, "full": 1.0}


def full_size_project(scale: Scale, *, seed: int = 1) -> Seed:
    """Return the seed of one project as big as the service allows, scaled for `scale`.

    Full: 100,000 images, 20 trained iterations whose snapshots hold 20,000 to 100,000
    images, about 4,800 images only a snapshot still holds. Seeding takes a fraction of a
    second and about 15 MB at full size (images are indices; bytes are generated on demand).
    """
    return Seed.full_size(FULL_SIZE_SCALE[scale], seed=seed)


class BenchError(RuntimeError):
    """A benchmark could not run (the bot did not start, a request failed, a wait timed out)."""


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `predicate` until it is true; raise BenchError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Return a clean environment for a child process: a few inherited basics plus `extra`.

    The child imports the same `bot` (and `bench`) as this process, wherever they live (a
    work tree, not only the installed copy).
    """
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(CODE_ROOT), str(BENCH_ROOT)]))
    env.update(extra)
    return env


def peak_rss_mb(pid: int) -> float:
    """Return the peak resident set size (VmHWM) of a live process, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fp:
        for line in fp:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise BenchError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a live process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fp:
        # The fields after the command name (which may hold spaces and parentheses); proc(5)'s
        # fields 14 and 15 (utime, stime) are the 12th and 13th of them.
        fields = fp.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_id(response: requests.Response) -> str:
    """Return the request id (R-1001) named in a command's acknowledgement; raise BenchError."""
    if response.status_code != 200:
        raise BenchError(f"the bot answered {response.status_code}: {response.text[:200]!r}")
    text = str(response.json().get("text", ""))
    found = named_request(text)
    if found is None:
        raise BenchError(f"no request id in the bot's answer {text!r}")
    return found


@dataclass
class Emulators:
    """Both emulators, running in this process."""

    cv: CustomVisionEmulator
    slack: SlackEmulator

    @classmethod
    def start(cls, seed: Seed, faults: Faults) -> Emulators:
        """Start both emulators with `seed` and `faults` and the demo people and channels."""
        cv, slack = start_emulators(seed, faults)
        return cls(cv, slack)

    def close(self) -> None:
        """Stop both emulators."""
        self.cv.stop()
        self.slack.stop()

    def calls_since(self, index: int) -> list[Call]:
        """Return the Custom Vision calls recorded after the first `index` ones."""
        return list(self.cv.calls[index:])

    def mark(self) -> int:
        """Return a position in the call record (for calls_since)."""
        return len(self.cv.calls)


class BotProcess:
    """`python -m bot serve` in a child process, configured for the emulators.

    Its log goes to a file in `data_dir` (kept for a post-mortem when a benchmark fails).
    `BotProcess.default_bolt(...)` runs bench.default_bolt instead, with the same settings.
    """

    def __init__(
        self,
        emulators: Emulators,
        data_dir: Path,
        *,
        module: Sequence[str] = ("bot", "--env-file", "no.env", "serve"),
        **overrides: str,
    ) -> None:
        self.data_dir = data_dir
        self.env = bot_env(emulators.cv, emulators.slack, data_dir, **overrides)
        self.database = Path(self.env["BOT_DATABASE"])
        self.log_path = data_dir / "bot.log"
        self.module = tuple(module)
        self.port = 0
        self._slack = emulators.slack
        self._log: TextIO | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def default_bolt(cls, emulators: Emulators, data_dir: Path, **overrides: str) -> BotProcess:
        """Return (not started) the default-way Bolt app of bench.default_bolt."""
        return cls(
            emulators,
            data_dir,
            module=("bench.default_bolt",),
            DOWNLOAD_DIR=str(data_dir / "downloads"),
            **overrides,
        )

    @property
    def pid(self) -> int:
        """Return the process id of the running bot."""
        if self._process is None:
            raise BenchError("the bot is not running")
        return self._process.pid

    @property
    def url(self) -> str:
        """Return the bot's Slack endpoint."""
        return f"http://127.0.0.1:{self.port}/slack/events"

    def start(self) -> BotProcess:
        """Start the bot and wait until it serves HTTP; raise BenchError if it does not."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        # cwd (and the bot's --env-file) is the scratch folder: no developer .env is read.
        self._process = subprocess.Popen(
            [sys.executable, "-m", *self.module],
            cwd=self.data_dir,
            env=child_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            match = SERVING.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
            if match:
                self.port = int(match.group(1))
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"the bot did not start; its log:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        """Return what the bot logged so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def driver(self, *, timeout: float = 30.0) -> SlackDriver:
        """Return a driver that sends signed Slack requests to this bot."""
        return SlackDriver(self.url, SIGNING_SECRET, self._slack, command="/cv", timeout=timeout)

    def ask(self, user_id: str, text: str, *, timeout: float = 120.0) -> str:
        """Type a slash command in CHANNEL; return the id of the request it stored.

        On a loaded machine the bot may answer "working on it" first and name the request in
        a follow-up message (response_url), which is waited for.
        """
        answer = self.driver().command(user_id, CHANNEL, text)
        if answer.status_code != 200:
            raise BenchError(f"the bot answered {answer.status_code}: {answer.text[:200]!r}")
        said = command_answer(self._slack, answer, timeout)
        found = named_request(said)
        if found is None:
            raise BenchError(f"the bot stored no request for {text!r}: {said[:200]!r}")
        return found

    def peak_rss_mb(self) -> float:
        """Return the bot's peak RSS so far, in MB."""
        return peak_rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) the bot has used so far, in seconds."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        """Stop the bot (SIGTERM, then SIGKILL after STOP_TIMEOUT) and close its log."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> BotProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading the bot's state (read-only) ----------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        try:
            yield conn
        finally:
            conn.close()

    def request_row(self, rid: str) -> dict[str, Any]:
        """Return the stored row of a request (status, message_ts, error, ...)."""
        number = parse_request_id(rid)
        with self._db() as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise BenchError(f"no request {rid} in the bot's database")
        return dict(row)

    def audit_events(self) -> int:
        """Return how many audit events the bot has recorded."""
        with self._db() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
        return int(count)

    def audited_at(self, rid: str, action: str) -> float:
        """Return when (time.time()) the newest audit event `action` of request `rid` was
        recorded; raise BenchError when there is none."""
        with self._db() as conn:
            (at,) = conn.execute(
                "SELECT MAX(at) FROM audit_events WHERE request_id = ? AND action = ?",
                (rid, action),
            ).fetchone()
        if at is None:
            raise BenchError(f"no {action} event of {rid}")
        return parse_iso(str(at)).timestamp()

    def statuses(self) -> dict[str, int]:
        """Return how many requests are in each status."""
        with self._db() as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM requests GROUP BY status")
            return {str(status): int(n) for status, n in rows}

    def wait_status(self, rid: str, *statuses: str, timeout: float) -> str:
        """Wait until request `rid` reaches one of `statuses` (or any final status); return it.

        Raises BenchError on timeout or when it ends in a status other than those asked for.
        """
        found: list[str] = []

        def reached() -> bool:
            status = str(self.request_row(rid)["status"])
            found[:] = [status]
            return status in statuses or status in TERMINAL

        wait_until(reached, timeout=timeout, what=f"{rid} to become {'/'.join(statuses)}")
        if found[0] not in statuses:
            error = self.request_row(rid).get("error")
            raise BenchError(f"{rid} ended {found[0]}: {error}")
        return found[0]

    def first_request(self, *, timeout: float) -> str:
        """Wait until the bot has stored a request; return the id of the first one.

        For a command the bot answers "working on it" first (a search before storing: the
        request id comes later, in a follow-up message).
        """
        found: list[int] = []

        def stored() -> bool:
            with self._db() as conn:
                (number,) = conn.execute("SELECT MIN(id) FROM requests").fetchone()
            found[:] = [] if number is None else [int(number)]
            return bool(found)

        wait_until(stored, timeout=timeout, what="a stored request")
        return format_request_id(found[0])

    def wait_approvable(self, rid: str, *, timeout: float = 30.0) -> None:
        """Wait until the bot posted the request's preview with its Approve button (before
        that, the bot refuses an approval: approvers must have seen what they approve)."""

        def posted() -> bool:
            with self._db() as conn:
                row = conn.execute(
                    "SELECT 1 FROM audit_events WHERE request_id = ? AND action = ?",
                    (rid, "approval.posted"),
                ).fetchone()
            return row is not None

        wait_until(posted, timeout=timeout, what=f"the Approve button of {rid}")

    def message_ts(self, rid: str, *, timeout: float = 30.0) -> str:
        """Wait until the request's announcement is posted; return its ts."""
        wait_until(
            lambda: bool(self.request_row(rid).get("message_ts")),
            timeout=timeout,
            what=f"the announcement of {rid}",
        )
        return str(self.request_row(rid)["message_ts"])


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """Yield a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"cvdsr-bench-{prefix}-") as folder:
        yield Path(folder)


def command_bodies(driver: SlackDriver, commands: Iterable[tuple[str, str]]) -> list[bytes]:
    """Return the form bodies of slash commands typed in CHANNEL, one per (user id, text)."""
    return [
        urlencode(driver.command_form(user, CHANNEL, text)).encode("ascii")
        for user, text in commands
    ]


def send_load(
    driver: SlackDriver,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    timeout: float,
) -> list[Answer]:
    """POST every body to the driver's bot, signed at send time, `concurrency` at a time;
    return the answers, in the bodies' order.

    The requests go from a process of their own (bench.load), not from this one, which hosts
    the emulators: the latencies are then the bot's, not this process's wait for its
    interpreter lock. Raises BenchError when that process fails.
    """
    job = {
        "url": driver.bot_url,
        "secret": driver.signing_secret,
        "bodies": [body.decode("latin-1") for body in bodies],
        "concurrency": concurrency,
        "timeout": timeout,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.load"],
        input=json.dumps(job).encode(),
        capture_output=True,
        env=child_env({}),
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"the load generator failed: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    return [
        Answer(float(latency), status, float(sent))
        for latency, status, sent in json.loads(done.stdout)
    ]
