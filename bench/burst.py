"""Benchmark 6: a burst of commands at Slack's pace, with the audit channel mirroring it all.

I/O module. The Slack emulator enforces Slack's rate tiers (emulators.slack.webapi.RATE_TIERS:
about 1 post a second per channel, chat.update about 50 a minute, ...). Eight `export project`
requests run while 10,000 signed slash commands arrive, 50 at a time: a third are `status`,
two thirds are refused (`status R-1001` and `resend R-1001` by someone who may not), so most
of them are an audit event that the audit channel mirrors. Measured: each acknowledgement's
latency (by bench.load, a process of its own: from just before a request is sent to the end of
its answer, with no wait for the interpreter lock of this process, where the emulators serve
the exports' downloads), how many calls Slack answered `ratelimited`, how long after each
export finished its "ready" message reached its thread (request threads must not wait behind
the mirror), and how long the mirror took to catch up after the burst.

The same commands are first sent one at a time to the idle bot, in the same run: the burst's
p99 over that idle p99 is a ratio that the machine's other load affects far less than the
milliseconds (the load average at the start and at the end is printed too).
"""

from __future__ import annotations

import collections
import functools
import os
import time
from dataclasses import dataclass

from bench import report
from bench.ack import ACK_LIMIT
from bench.harness import (
    BenchError,
    BotProcess,
    Emulators,
    command_bodies,
    request_id,
    scratch,
    send_load,
    wait_until,
)
from bench.load import Answer
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot import audit
from emulators.customvision import Faults, Seed
from emulators.slack.driver import SlackDriver
from emulators.stack import AUDIT_CHANNEL, CHANNEL, REQUESTER, STRANGER

P99_TARGET = 0.250


@dataclass(frozen=True)
class Size:
    exports: int
    images: int  # per exported project
    commands: int
    concurrency: int
    catch_up_timeout: float
    idle_commands: int  # sent one at a time before the exports: the same run's baseline


SIZES: dict[Scale, Size] = {
    "smoke": Size(
        exports=2, images=10, commands=120, concurrency=10, catch_up_timeout=120.0, idle_commands=12
    ),
    "bench": Size(
        exports=8,
        images=100,
        commands=1_000,
        concurrency=50,
        catch_up_timeout=600.0,
        idle_commands=100,
    ),
    "full": Size(
        exports=8,
        images=100,
        commands=10_000,
        concurrency=50,
        catch_up_timeout=900.0,
        idle_commands=300,
    ),
}
LIMITED = "ratelimited:"  # figure key prefix: calls Slack answered `ratelimited`, per method


def _bodies(driver: SlackDriver, count: int) -> list[bytes]:
    cycle = (
        (REQUESTER.user_id, "status"),
        (STRANGER.user_id, "status R-1001"),
        (STRANGER.user_id, "resend R-1001"),
    )
    return command_bodies(driver, (cycle[i % len(cycle)] for i in range(count)))


def _witnessed(emulators: Emulators) -> set[int]:
    return {
        seq
        for message in emulators.slack.messages(AUDIT_CHANNEL)
        for seq, _ in audit.parse_mirror_lines(message.text)
    }


def _mirrored(emulators: Emulators, events: int) -> bool:
    return len(_witnessed(emulators)) >= events


def _said_ready(emulators: Emulators, thread_ts: str) -> bool:
    return any("export is ready" in m.text for m in emulators.slack.messages(CHANNEL, thread_ts))


@dataclass(frozen=True)
class BurstRun:
    idle: tuple[Answer, ...]  # the same commands, one at a time, before the exports
    answers: tuple[Answer, ...]
    load_s: float
    events: int
    backlog: int  # events not yet in the audit channel when the burst ended
    catch_up_s: float
    mirror_messages: int
    thread_lags: tuple[float, ...]  # export done -> its "ready" message, seconds
    rate_limited: int
    limited_methods: tuple[tuple[str, int], ...]  # methods Slack answered `ratelimited`, counts
    load_average: tuple[float, float]  # the machine's 1-minute load at the start and the end
    exports_done: float  # time.time() when the last export was completed


def _measure(process: BotProcess, emulators: Emulators, size: Size) -> BurstRun:
    driver = process.driver(timeout=ACK_LIMIT)
    load_before = os.getloadavg()[0]
    idle = send_load(driver, _bodies(driver, size.idle_commands), concurrency=1, timeout=ACK_LIMIT)
    projects = emulators.cv.data.project_ids()[: size.exports]
    rids = [
        request_id(driver.command(REQUESTER.user_id, CHANNEL, f"export project {project}"))
        for project in projects
    ]
    started = time.perf_counter()
    answers = send_load(
        driver, _bodies(driver, size.commands), concurrency=size.concurrency, timeout=ACK_LIMIT
    )
    load_s = time.perf_counter() - started
    ended = time.monotonic()
    events = process.audit_events()
    backlog = events - len(_witnessed(emulators))

    lags: list[float] = []
    for rid in rids:
        process.wait_status(rid, "done", timeout=size.catch_up_timeout)
        done_at = time.monotonic()
        ts = process.message_ts(rid)
        wait_until(
            functools.partial(_said_ready, emulators, ts),
            timeout=size.catch_up_timeout,
            what=f"the ready message of {rid}",
            interval=0.1,
        )
        lags.append(time.monotonic() - done_at)
    # Exports still add events (their files posted) while the mirror catches up: caught up
    # is every event there is, twice in a row.
    total = 0
    while total != process.audit_events() or len(_witnessed(emulators)) < total:
        total = process.audit_events()
        wait_until(
            functools.partial(_mirrored, emulators, total),
            timeout=size.catch_up_timeout,
            what="the audit mirror to catch up",
            interval=0.2,
        )
    catch_up = time.monotonic() - ended
    exports_done = max(process.audited_at(rid, "request.completed") for rid in rids)
    if _witnessed(emulators) != set(range(1, total + 1)):
        raise BenchError("the audit channel does not hold every event exactly once")
    return BurstRun(
        idle=tuple(idle),
        answers=tuple(answers),
        load_s=load_s,
        events=total,
        backlog=backlog,
        catch_up_s=catch_up,
        mirror_messages=len(emulators.slack.messages(AUDIT_CHANNEL)),
        thread_lags=tuple(lags),
        rate_limited=emulators.slack.rate_limited(),
        limited_methods=tuple(
            collections.Counter(
                c.method for c in emulators.slack.calls if c.error == "ratelimited"
            ).items()
        ),
        load_average=(load_before, os.getloadavg()[0]),
        exports_done=exports_done,
    )


def measure(scale: Scale) -> Figures:
    """Send the burst to the bot with Slack's rate tiers on; return one run's figures."""
    size = SIZES[scale]
    seed = Seed(projects=size.exports, iterations=1, tags=3, images=size.images, predictions=0)
    emulators = Emulators.start(seed, Faults(blob_latency=0.005))
    emulators.slack.enable_rate_tiers()
    try:
        with scratch("burst") as folder, BotProcess(emulators, folder / "bot") as process:
            run = _measure(process, emulators, size)
    finally:
        emulators.close()
    latencies = [a.latency for a in run.answers]
    idle = [a.latency for a in run.idle]
    # Sent while exports ran (their download threads share the bot's interpreter lock) or
    # after the last one was done: the two phases of one run, compared on the same machine.
    during = [a.latency for a in run.answers if a.sent < run.exports_done] or [0.0]
    after = [a.latency for a in run.answers if a.sent >= run.exports_done] or [0.0]
    burst_start = min(a.sent for a in run.answers)
    p99 = report.percentile(latencies, 99)
    idle_p99 = report.percentile(idle, 99)
    return {
        "commands": len(run.answers),
        "concurrency": size.concurrency,
        "exports": size.exports,
        "load_s": run.load_s,
        "p50_s": report.percentile(latencies, 50),
        "p99_s": p99,
        "max_s": max(latencies),
        "exports_for_s": max(0.0, run.exports_done - burst_start),
        "during_exports": sum(1 for a in run.answers if a.sent < run.exports_done),
        "during_exports_p50_s": report.percentile(during, 50),
        "during_exports_p99_s": report.percentile(during, 99),
        "after_exports": sum(1 for a in run.answers if a.sent >= run.exports_done),
        "after_exports_p50_s": report.percentile(after, 50),
        "after_exports_p99_s": report.percentile(after, 99),
        "idle_commands": len(idle),
        "idle_p50_s": report.percentile(idle, 50),
        "idle_p99_s": idle_p99,
        "idle_max_s": max(idle),
        "burst_over_idle_p99": report.ratio(p99, idle_p99),
        "load_average_start": run.load_average[0],
        "load_average_end": run.load_average[1],
        "missed": sum(1 for a in run.answers if a.missed(ACK_LIMIT)),
        "rate_limited": run.rate_limited,
        "events": run.events,
        "mirror_messages": run.mirror_messages,
        "events_per_message": run.events / max(1, run.mirror_messages),
        "backlog": run.backlog,
        "catch_up_s": run.catch_up_s,
        "thread_lag_max_s": max(run.thread_lags),
        "thread_lag_over_catch_up": report.ratio(max(run.thread_lags), max(run.catch_up_s, 5.0)),
        **{f"{LIMITED}{method}": n for method, n in run.limited_methods},
    }


def _latencies(f: Figures, prefix: str) -> str:
    return " / ".join(report.millis(f[f"{prefix}{p}_s"]) for p in ("p50", "p99", "max"))


def _p50_p99(f: Figures, prefix: str) -> str:
    if not f[prefix.rstrip("_")]:
        return "none"
    return ", ".join(report.millis(f[f"{prefix}{p}_s"]) for p in ("p50", "p99"))


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    limited = [f"{key[len(LIMITED) :]}: {n:.0f}" for key, n in f.items() if key.startswith(LIMITED)]
    n = f"{f['commands']:,.0f}"
    return Result(
        key="burst",
        title="6. A burst of commands at Slack's pace",
        setup=(
            f"{n} slash commands, {f['concurrency']:.0f} at a time, while {f['exports']:.0f} "
            "exports run; Slack's rate tiers on; the audit channel mirrors every event"
        ),
        rows=(
            Row("acknowledgements p50 / p99 / max", _latencies(f, "")),
            Row(
                "acknowledgement p99",
                report.millis(f["p99_s"]),
                f"< {P99_TARGET * 1000:g} ms",
                f["p99_s"] < P99_TARGET,
            ),
            Row(
                "acknowledgements over 3 s (or not 200)",
                f"{f['missed']:.0f} of {n}",
                "0",
                f["missed"] == 0,
            ),
            Row(
                f"while the exports ran ({f['exports_for_s']:.1f} s of the burst, "
                f"{f['during_exports']:,.0f} commands) / after: p50, p99",
                f"{_p50_p99(f, 'during_exports_')} / {_p50_p99(f, 'after_exports_')}",
            ),
            Row(
                f"idle acknowledgements p50 / p99 / max (the same run, "
                f"{f['idle_commands']:.0f} one at a time)",
                _latencies(f, "idle_"),
            ),
            Row("burst p99 / idle p99 (the same run)", report.times(f["burst_over_idle_p99"])),
            Row(
                "machine load average (1 min) at the start / the end",
                f"{f['load_average_start']:.1f} / {f['load_average_end']:.1f}",
            ),
            Row(
                "calls Slack answered `ratelimited`",
                report.count(f["rate_limited"]),
                "0",
                f["rate_limited"] == 0,
            ),
            Row(
                "audit events / mirror messages",
                f"{f['events']:,.0f} / {f['mirror_messages']:,.0f} "
                f"({f['events_per_message']:.1f} per message)",
            ),
            Row("mirror backlog when the burst ended", f"{f['backlog']:,.0f} events"),
            Row("audit mirror caught up after the burst", report.seconds(f["catch_up_s"])),
            Row(
                "export done -> its thread says ready (max)",
                report.seconds(f["thread_lag_max_s"]),
                "< mirror catch-up",
                f["thread_lag_over_catch_up"] <= 1,
            ),
        ),
        figures=f,
        notes=(f"answered `ratelimited`: {', '.join(limited)}",) if limited else (),
    )


BENCHMARK = Benchmark("burst", measure, present)
