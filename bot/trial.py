"""The live trial, `python -m bot trial`: the bot against a real Custom Vision resource.

No machine of the project reaches Azure, so the emulator's Azure-like behaviours (issue 15)
rest on recordings and inference. The trial lets a user measure them on their own resource,
safely, and send the report back:

- It creates its own scratch project (`cv-dsr-bot-trial-<utc stamp>-<random>`) and touches
  nothing else: every deletion goes through `require_scratch`, which refuses any project but
  the one created in this run. The project is deleted in a `finally`, whatever failed.
- It uploads TRIAL_IMAGES generated PNGs (bot.pngbytes) with two tags, regions (an object
  detection project: regions follow the tags) and metadata, then runs the bot's own jobs the
  way the runner does (Runner.run_one on a local SQLite file and work folder, no Slack): an
  export of the project (package writer), and a deletion (preview, frozen plan, delete,
  verification, receipt).
- It measures what the emulator can only assume: the `se` lifetime of returned links, a link
  downloaded again after `reuse_delay` seconds, the lag until a 202 DeleteImages leaves the
  workspace and the iteration snapshot, the call rate achieved and any 429, and (with
  `train=True`: Azure bills the training) the error codes of the guessed cases: unpublishing
  an iteration in training, unpublishing one not published, deleting a published one.
- It writes `trial-report.json` and returns a short summary saying, for each of ASSUMPTIONS
  (the emulator's defaults, held to emulators.customvision by a test), whether it held.

I/O module: it talks to the Training API through bot.training and to blob storage through
the client's download; the probes of error codes send their one call raw (`_probe`), since
the client deliberately hides those codes (it reads the iteration back instead).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from bot import commands, parser
from bot.clock import SystemClock
from bot.db import Database
from bot.deletion import run_delete, run_preview
from bot.errors import BotError, NotFound, TrainingApiError
from bot.exporter import run_export
from bot.lifecycle import JobKind, RequestKind, Role, Status
from bot.pngbytes import png
from bot.runner import Runner, Settings
from bot.store import Store
from bot.training import API_VERSION, TrainingClient

log = logging.getLogger(__name__)

NAME_PREFIX = "cv-dsr-bot-trial-"
TRIAL_IMAGES = 20
REQUESTER = "trial-requester"
APPROVER = "trial-approver"
# What --train costs, as Microsoft's pricing page puts it (S0: training billed per compute
# hour, a few minutes for 20 small images; storage of 20 images is negligible).
TRAIN_COST = (
    "--train trains one tiny iteration (20 images of 64x48 pixels): Azure bills training "
    "compute by the hour (S0 tier; a few minutes here, typically well under US$1; free on F0 "
    "within its monthly hours) and publishing needs a prediction resource (no charge until "
    "predictions are made)."
)

# The emulator's default assumptions (emulators.customvision.Faults), which the trial checks.
# tests/test_trial.py holds these to the emulator's defaults.
ASSUMPTIONS: dict[str, Any] = {
    "link_lifetime_seconds": 86_400.0,
    "workspace_delete_lag_seconds": 0.0,
    "snapshot_delete_lag_seconds": 0.2,
    "unpublish_unpublished": "BadRequestIterationNotPublished",
    "delete_published": "BadRequestIterationIsPublished",
    "unpublish_while_training": "BadRequestTrainingAlreadyInProgress",
    "reused_link_downloads": True,
}
# How close a measured lifetime must be to count as the assumed one (clocks differ).
LIFETIME_SLACK = 600.0
# A measured lag "holds" when it is no longer than the assumed lag plus this much: the bot's
# verification copes with longer lags, but the emulator's tests would not exercise them.
LAG_SLACK = 2.0


class TrialRefused(BotError):
    """The trial was about to touch a project that is not its own scratch project."""


def scratch_name(now: datetime, token: str | None = None) -> str:
    """Return a scratch project name no one can mistake for real data."""
    token = token or secrets.token_hex(4)
    return f"{NAME_PREFIX}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{token}"


def require_scratch(project_id: str, created_id: str | None) -> str:
    """Return `project_id` when it is the scratch project this run created; raise TrialRefused
    otherwise (before any deletion)."""
    if created_id is None or project_id.lower() != created_id.lower():
        raise TrialRefused(
            f"The trial refuses to delete in project {project_id}: it only deletes in the "
            f"scratch project it created in this run ({created_id or 'none created'})."
        )
    return project_id


@dataclass
class CallCounter:
    """Counts every Training API and storage answer the trial's session receives (not the bot
    export's file downloads: those run in its download process, bot.fetcher)."""

    calls: int = 0
    throttled: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)

    def peak(self) -> int:
        """Return the most answers received within any one second."""
        best, start = 0, 0
        for end, moment in enumerate(self.times):
            while moment - self.times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return best

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.monotonic())
        self.calls += 1
        self.statuses[str(response.status_code)] = (
            self.statuses.get(str(response.status_code), 0) + 1
        )
        if response.status_code == 429:
            self.throttled += 1


@dataclass
class Trial:
    """One run: its client, where it writes, and what it measured so far."""

    client: TrainingClient
    session: requests.Session
    endpoint: str
    key: str
    output: Path
    reuse_delay: float
    train: bool
    prediction_resource_id: str | None
    verify_timeout: float
    poll: float
    sleep: Callable[[float], None] = time.sleep
    project_id: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    # -- steps ---------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a step's outcome and duration; a failure is recorded, then raised."""
        entry: dict[str, Any] = {"step": name, "ok": False}
        self.steps.append(entry)
        started = time.monotonic()
        try:
            yield entry
            entry["ok"] = True
        except Exception as exc:
            entry["error"] = _describe(exc)
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - started, 3)

    def create(self) -> tuple[str, list[str], list[str]]:
        """Create the scratch project, two tags and the images; return (project, tags, images)."""
        with self.step("create project") as entry:
            domains = self.client.get_domains()
            domain = next(
                (d for d in domains if d.type == "ObjectDetection" and d.name == "General"),
                next((d for d in domains if d.type == "ObjectDetection"), None),
            )
            name = scratch_name(datetime.now(UTC))
            entry["name"] = name
            try:
                project = self.client.create_project(
                    name,
                    description="Scratch project of the cv-dsr-bot live trial; safe to delete.",
                    domain_id=None if domain is None else domain.id,
                )
                self.project_id = project.id
            except TrainingApiError:
                # A retried create may have made it: the name is unique, so look it up.
                found = [p for p in self.client.get_projects() if p.name == name]
                if not found:
                    raise
                self.project_id = found[0].id
            entry["project_id"] = self.project_id
            entry["domain"] = None if domain is None else f"{domain.name} ({domain.type})"
        p = self.project_id
        detection = domain is not None
        with self.step("create tags and images") as entry:
            tags = [self.client.create_tag(p, f"trial-{n}").id for n in ("a", "b")]
            images = [
                (f"trial-{n}.png", png(64, 48, f"trial/{n}", 600), tags)
                for n in range(TRIAL_IMAGES)
            ]
            ids = self.client.create_images(
                p, images, metadata={"trial": "cv-dsr-bot"}, regions=detection
            )
            statuses = self.client.update_image_metadata(p, ids[:5], {"subject": "trial-subject"})
            entry.update(images=len(ids), tags=len(tags), regions=detection, metadata=statuses)
        return p, tags, ids

    def links(self, p: str, keep: set[str]) -> str | None:
        """Measure the `se` lifetime of the image links just listed; return the link of an
        image in `keep` (one the lag probe does not delete)."""
        with self.step("link lifetime") as entry:
            listed_at = datetime.now(UTC)
            page = self.client.get_images_page(p, take=5)
            uris = {i.id: i.original_image_uri for i in page if i.original_image_uri}
            lifetimes = [_lifetime(u, listed_at) for u in uris.values()]
            found = [x for x in lifetimes if x is not None]
            entry["links"] = len(uris)
            self.report["link_lifetime_seconds"] = min(found) if found else None
            return next((u for i, u in uris.items() if i in keep), None)

    def training(self, p: str) -> str | None:
        """Train, probe unpublish mid-training, wait, publish, probe deleting it published."""
        with self.step("train and publish") as entry:
            iteration = self.client.train_project(p)
            i = iteration.id
            entry["iteration_id"] = i
            status = self.client.get_iteration(p, i).status
            if status == "Training":
                self.report["unpublish_while_training"] = self._probe(
                    "DELETE", f"/projects/{p}/iterations/{i}/publish"
                )
            deadline = time.monotonic() + 3600
            while status == "Training" and time.monotonic() < deadline:
                self.sleep(self.poll)
                status = self.client.get_iteration(p, i).status
            entry["status"] = status
            if status != "Completed":
                raise BotError(f"The trial's iteration ended {status}, not Completed.")
            if not self.prediction_resource_id:
                return i
            self.client.publish_iteration(p, i, "cv-dsr-bot-trial", self.prediction_resource_id)
            self.report["delete_published"] = self._probe("DELETE", f"/projects/{p}/iterations/{i}")
            return i

    def unpublish_twice(self, p: str, i: str) -> None:
        """Unpublish (the first must work), then again: the code of "not published"."""
        with self.step("unpublish twice"):
            require_scratch(p, self.project_id)
            first = self._probe("DELETE", f"/projects/{p}/iterations/{i}/publish")
            self.report["unpublish_published"] = first
            self.report["unpublish_unpublished"] = self._probe(
                "DELETE", f"/projects/{p}/iterations/{i}/publish"
            )

    def delete_lag(self, p: str, image_ids: list[str], iteration_id: str | None) -> None:
        """Delete two images everywhere (202) and time until they leave each place."""
        with self.step("202 lag") as entry:
            require_scratch(p, self.project_id)
            started = time.monotonic()
            entry["status"] = self.client.delete_images(p, image_ids, all_iterations=True)
            places: dict[str, str | None] = {"workspace": None}
            if iteration_id is not None:
                places["snapshot"] = iteration_id
            lags: dict[str, float | None] = dict.fromkeys(places)
            deadline = started + self.verify_timeout
            while any(v is None for v in lags.values()) and time.monotonic() < deadline:
                for place, it in places.items():
                    if lags[place] is None and not self.client.get_images_by_ids(
                        p, image_ids, iteration_id=it
                    ):
                        lags[place] = round(time.monotonic() - started, 3)
                if any(v is None for v in lags.values()):
                    self.sleep(self.poll)
            self.report["workspace_delete_lag_seconds"] = lags["workspace"]
            self.report["snapshot_delete_lag_seconds"] = lags.get("snapshot")

    def reuse(self, uri: str | None) -> None:
        """Download a link again after the reuse delay."""
        with self.step("reused link") as entry:
            entry["delay_seconds"] = self.reuse_delay
            if uri is None:
                self.report["reused_link_downloads"] = None
                return
            self.sleep(self.reuse_delay)
            try:
                got = self.client.download(uri, self.output / "reused-link.png")
                self.report["reused_link_downloads"] = True
                entry["bytes"] = got.size
            except TrainingApiError as exc:
                self.report["reused_link_downloads"] = False
                entry["answer"] = _describe(exc)

    def bot_jobs(self, p: str) -> None:
        """Run the bot's own export and deletion of the scratch project, as the runner does."""
        db = Database(self.output / "trial.db")
        clock = SystemClock()
        store = Store(db, clock, secrets=[self.key])
        verify_timeout = self.verify_timeout
        runner = Runner(
            store,
            self.client,
            {
                "export": run_export,
                "preview": run_preview,
                "delete": lambda ctx: run_delete(
                    ctx, verify_timeout=verify_timeout, verify_patience=0.0
                ),
            },
            clock=clock,
            work_dir=self.output / "work",
            settings=Settings(),
        )

        def run(text: str, status: Status, job: JobKind) -> int:
            command = parser.parse(text)
            assert isinstance(command, commands.Export | commands.Delete)
            kind = (
                RequestKind.EXPORT if isinstance(command, commands.Export) else RequestKind.DELETE
            )
            with store.write() as conn:
                number = store.create_request(
                    conn,
                    kind=kind,
                    command=command.to_dict(),
                    text=text,
                    requester=REQUESTER,
                    channel="trial",
                    status=status,
                )
                store.enqueue_job(conn, number, job)
            drain()
            return number

        def drain() -> None:
            while (claimed := store.claim_job("trial", timedelta(minutes=30))) is not None:
                runner.run_one(claimed)

        try:
            with self.step("bot export") as entry:
                number = run(f"export project {p}", Status.QUEUED, JobKind.EXPORT)
                record = store.get(number)
                entry.update(request=record.id, status=str(record.status), problem=record.error)
                folder = self.output / "work" / record.id
                # os.walk, not rglob: the download cache is deleted on a thread of its own
                # meanwhile (exporter._discard_cache), and rglob fails on a folder that goes
                # while it reads it (os.walk passes over it).
                entry["files"] = sorted(
                    str(Path(top, name).relative_to(folder))
                    for top, _dirs, names in os.walk(folder)
                    for name in names
                )
                if record.status != Status.DONE:
                    raise BotError(f"The bot's export ended {record.status}: {record.error}")
            with self.step("bot deletion") as entry:
                require_scratch(p, self.project_id)
                number = run(f"delete images {p} --all", Status.PREVIEWING, JobKind.PREVIEW)
                with store.write() as conn:
                    store.add_approval(conn, number, APPROVER)
                    approved = store.transition(
                        conn, number, to=Status.APPROVED, by=Role.APPROVER, actor=APPROVER
                    )
                    if not approved:
                        record = store.get(number, conn)
                        raise BotError(f"The bot's preview ended {record.status}: {record.error}")
                    store.enqueue_job(conn, number, JobKind.DELETE)
                drain()
                record = store.get(number)
                entry.update(request=record.id, status=str(record.status), problem=record.error)
                receipt = self.output / "work" / record.id / "receipt.json"
                if receipt.exists():
                    document = json.loads(receipt.read_text(encoding="utf-8"))
                    entry["receipt"] = {k: v for k, v in document.items() if k not in ("items",)}
                if record.status != Status.DONE:
                    raise BotError(f"The bot's deletion ended {record.status}: {record.error}")
        finally:
            db.close()

    def clean_up(self) -> None:
        """Delete the scratch project (unpublishing first), and check it is gone."""
        if self.project_id is None:
            return
        with self.step("delete scratch project") as entry:
            p = require_scratch(self.project_id, self.project_id)
            try:
                for iteration in self.client.get_iterations(p):
                    if iteration.publish_name:
                        self.client.unpublish_iteration(p, iteration.id)
            except NotFound:
                pass
            entry["status"] = self.client.delete_project(p)
            try:
                self.client.get_project(p)
                entry["gone"] = False
            except NotFound:
                entry["gone"] = True
            self.report["scratch_project_deleted"] = entry["gone"]

    # -- raw probes ----------------------------------------------------------------------

    def _probe(self, method: str, path: str) -> dict[str, Any]:
        """Send one call (a change: only in the scratch project) and return its status and
        error code, as the service answered."""
        require_scratch(path.split("/")[2], self.project_id)
        url = f"{self.endpoint}/customvision/{API_VERSION}/training{path}"
        self.client.limiter.acquire()
        response = self.session.request(
            method, url, headers={"Training-Key": self.key}, timeout=30.0
        )
        code: str | None = None
        try:
            body = response.json()
            error = body.get("error", body) if isinstance(body, dict) else {}
            code = error.get("code") if isinstance(error, dict) else None
        except ValueError:
            pass
        return {"status": response.status_code, "code": code}


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "user_message", None) or str(exc)
    return f"{type(exc).__name__}: {message}"


def _lifetime(uri: str, listed_at: datetime) -> float | None:
    """Return seconds from `listed_at` to the link's `se` (signed expiry), if it has one."""
    se = parse_qs(urlsplit(uri).query).get("se")
    if not se:
        return None
    try:
        expiry = datetime.fromisoformat(se[0].replace("Z", "+00:00"))
    except ValueError:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return round((expiry - listed_at).total_seconds(), 1)


def compare(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Return, for each of ASSUMPTIONS, the assumed and measured value and whether it held
    (None: not measured in this run)."""
    rows = []
    for name, assumed in ASSUMPTIONS.items():
        value = measured.get(name)
        if isinstance(value, dict):  # a probe: its error code (or its status when none)
            value = value.get("code") or str(value.get("status"))
        if value is None:
            held = None
        elif name == "link_lifetime_seconds":
            held = abs(float(value) - assumed) <= LIFETIME_SLACK
        elif name.endswith("_lag_seconds"):
            held = float(value) <= assumed + LAG_SLACK
        else:
            held = value == assumed
        rows.append({"assumption": name, "emulator": assumed, "measured": value, "held": held})
    return rows


def summary(report: dict[str, Any]) -> str:
    """Return the human summary of a report."""
    lines = [f"Live trial against {report['endpoint']} ({report['project_name'] or 'no project'})"]
    for step in report["steps"]:
        mark = "ok  " if step["ok"] else "FAIL"
        extra = f" — {step['error']}" if "error" in step else ""
        lines.append(f"  {mark} {step['step']} ({step['seconds']} s){extra}")
    lines.append(
        f"Calls: {report['calls']['total']} in {report['seconds']} s "
        f"({report['calls']['per_second']}/s on average, at most "
        f"{report['calls']['peak_per_second']} in one second, the bot's cap "
        f"{report['calls']['client_rate_cap']}/s), {report['calls']['throttled']} answered 429."
    )
    lines.append("Emulator assumptions:")
    for row in report["assumptions"]:
        verdict = {True: "held", False: "DID NOT HOLD", None: "not measured"}[row["held"]]
        lines.append(
            f"  {verdict}: {row['assumption']} (emulator {row['emulator']!r}, "
            f"measured {row['measured']!r})"
        )
    gone = report["measured"].get("scratch_project_deleted")
    lines.append(
        "Scratch project deleted."
        if gone
        else f"THE SCRATCH PROJECT MAY REMAIN: delete it in the portal ({report['project_name']})."
    )
    return "\n".join(lines)


def run_trial(
    endpoint: str,
    training_key: str,
    output: Path,
    *,
    train: bool = False,
    prediction_resource_id: str | None = None,
    reuse_delay: float = 5.0,
    verify_timeout: float = 600.0,
    poll: float = 1.0,
    tps: float = 10.0,
    client_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the trial, write output/trial-report.json; return the report. The scratch project
    is deleted whatever fails; a failure is recorded in the report, then raised.
    `client_options` go to the TrainingClient (tests: fewer, quicker retries)."""
    output.mkdir(parents=True, exist_ok=True)
    counter = CallCounter()
    session = requests.Session()
    session.hooks["response"].append(counter.hook)
    options = client_options or {}
    client = TrainingClient(endpoint, training_key, session=session, tps=tps, **options)
    trial = Trial(
        client,
        session,
        client.endpoint,
        training_key,
        output,
        reuse_delay,
        train,
        prediction_resource_id,
        verify_timeout,
        poll,
    )
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        p, _tags, images = trial.create()
        uri = trial.links(p, set(images[2:]))
        iteration = trial.training(p) if train else None
        trial.delete_lag(p, images[:2], iteration)
        trial.reuse(uri)
        if iteration is not None and prediction_resource_id:
            trial.unpublish_twice(p, iteration)
        trial.bot_jobs(p)
    except BaseException as exc:
        failure = exc
    finally:
        try:
            trial.clean_up()
        except Exception as exc:
            failure = failure or exc
        finally:
            client.close()
            session.close()
    seconds = round(time.monotonic() - started, 1)
    names = [s.get("name") for s in trial.steps if s["step"] == "create project"]
    report: dict[str, Any] = {
        "endpoint": urlsplit(client.endpoint).netloc,
        "project_name": names[0] if names else None,
        "project_id": trial.project_id,
        "trained": train,
        "seconds": seconds,
        "calls": {
            "total": counter.calls,
            "per_second": round(counter.calls / seconds, 2) if seconds else None,
            "peak_per_second": counter.peak(),
            "client_rate_cap": tps,
            "throttled": counter.throttled,
            "statuses": counter.statuses,
        },
        "measured": trial.report,
        "assumptions": compare(trial.report),
        "steps": trial.steps,
        "failed": failure is not None,
    }
    text = json.dumps(report, indent=2, sort_keys=True).replace(training_key, "[key]")
    (output / "trial-report.json").write_text(text + "\n", encoding="utf-8")
    if failure is not None:
        raise failure
    return report
