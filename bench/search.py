"""Benchmark 8: what one person's search costs, against the script that lists everything.

I/O module. One Custom Vision resource of 50 projects, each with 2,000 workspace images and 3
trained iterations (`--full`, the issue's size; `make bench`: 20 projects of 1,000 images); the
emulator's seeded snapshots hold a third, two thirds and all of the images, plus some the
workspace has since lost. One person, metadata customer=4711, is on 30 images in 4 of the
projects: images also held by snapshots, images added after the last training (workspace only),
and images deleted from the workspace that only snapshots still hold.
In those 4 projects the person's workspace images also carry a workspace tag "Customer 4711".

The emulator plays the service's limit of 10 Training API calls per second (sliding one-second
window, 429 above it) and its other Azure-like behaviours (the defaults). The requester types
`/cv find --metadata customer=4711` (then `--tag-name "customer 4711"`) over signed HTTP into
the bot running as its own process (`python -m bot serve`, CUSTOM_VISION_TPS=10); each is timed
from the command to the private answer.

- Calls: every Training API call the emulator recorded between the command and the answer,
  429 answers apart (none are expected: the bot paces itself).
- Then the same search with every call taking 200 ms (the emulator's `latency`): slower calls
  than the limit's tenth of a second, as calls to a cloud region are, must not slow find down.
- Bound: the least time those N calls can take at the limit, N ÷ 10 s (as the other benchmarks
  state it: at 10 calls in any one second, the calls after the first ten wait at least a tenth
  of a second each on average).
- Baseline: what a script would do with the SDK: GetProjects, then per project GetIterations
  and every image of the workspace and of each trained iteration, GetImages pages of 256 read
  oldest first until a short page (no GetImageCount: a script does not count first), filtering
  on the client. It is run against the same seeded emulator with the rate limit switched off
  (only its number of calls matters, and it is the same either way), and it must find the same
  images in the same scopes as find counts, or the benchmark fails.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass

from bench import report
from bench.harness import BenchError, BotProcess, Emulators, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot.models import Image
from bot.training import TrainingClient
from emulators.customvision import METADATA_LIMITS, Faults, Seed
from emulators.cvdata import EmulatorData
from emulators.stack import CHANNEL, REQUESTER, TRAINING_KEY

TPS = 10.0
CALLS_TARGET = 20.0  # the baseline's calls ÷ find's, at least
BOUND_TARGET = 1.2  # find's wall time ÷ its bound, at most
KEY, VALUE = "customer", "4711"
TAG = "Customer 4711"
FIND = f"find --metadata {KEY}={VALUE}"
FIND_TAG = 'find --tag-name "customer 4711"'  # tag names match in any case
ANSWERED = "Nothing was changed."
# Seconds the emulator takes per call in the third search. The service's own latency is not
# documented; a call to a cloud region over the internet takes tens to hundreds of
# milliseconds (inferred), longer than the tenth of a second the limit allows per call.
LATENCY = 0.2
PAGE = 256  # GetImages' largest page, the script's best case
DEFAULT_PAGE = 50  # GetImages' page when `take` is not given (spec)

# A scope of one project: "workspace", or the trained iteration's name.
Scope = tuple[str, str]  # (first 8 characters of the project id, scope)


@dataclass(frozen=True)
class Size:
    projects: int
    images: int  # workspace images per project
    iterations: int
    # The person's images per project holding them: (in the workspace and snapshots, added
    # after the last training, deleted from the workspace and left in the snapshots).
    person: tuple[tuple[int, int, int], ...]


PERSON = ((5, 2, 1), (5, 2, 1), (4, 2, 1), (4, 2, 1))  # 8 + 8 + 7 + 7 = 30 images
SIZES: dict[Scale, Size] = {
    "smoke": Size(projects=4, images=300, iterations=2, person=((2, 1, 1), (2, 1, 0))),
    "bench": Size(projects=20, images=1_000, iterations=3, person=PERSON),
    "full": Size(projects=50, images=2_000, iterations=3, person=PERSON),
}


@dataclass(frozen=True)
class Search:
    """One find as measured: its wall time, calls (by operation), 429s and answer."""

    wall_s: float
    calls: Counter[str]
    throttled: int
    answer: str

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def bound_s(self) -> float:
        return self.total / TPS


def seed_person(data: EmulatorData, size: Size) -> set[str]:
    """Put the person on images of `size.person`'s projects (spread over the resource); return
    the ids of their images."""
    projects = data.project_ids()
    step = max(1, len(projects) // len(size.person))
    pairs = {KEY: VALUE}
    mine: set[str] = set()
    for n, (kept, added, dropped) in enumerate(size.person):
        project = projects[(n * step + step // 2) % len(projects)]
        workspace = data.image_ids(project)  # oldest first: the oldest are in every snapshot
        spread = max(1, len(workspace) // (kept + dropped + 1))
        chosen = workspace[spread // 2 :: spread][: kept + dropped]
        data.api_update_metadata(project, chosen, pairs, METADATA_LIMITS["docs"])
        data.api_update_metadata(project, workspace[-1:], {KEY: "4712"}, METADATA_LIMITS["docs"])
        gone = chosen[:dropped]
        data.api_delete_images(
            project, gone, all_images=False, all_iterations=False, delay=lambda *_: 0.0
        )
        tag = data.add_tag(project, TAG)
        fresh = data.add_images(project, added, tag_ids=[tag], metadata=pairs)
        data.tag_images(project, chosen[dropped:], tag)
        mine.update(chosen, fresh)
    return mine


def _timed_find(emulators: Emulators, bot: BotProcess, text: str) -> Search:
    slack = emulators.slack
    seen = len(slack.ephemerals(user_id=REQUESTER.user_id))
    mark = emulators.mark()
    started = time.perf_counter()
    response = bot.driver().command(REQUESTER.user_id, CHANNEL, text)
    if response.status_code != 200:
        raise BenchError(f"`{text}` was answered HTTP {response.status_code}")
    found: list[str] = []

    def answered() -> bool:
        fresh = slack.ephemerals(user_id=REQUESTER.user_id)[seen:]
        found[:] = [e.text for e in fresh if ANSWERED in e.text]
        return bool(found)

    if not slack.wait_for(answered, timeout=600):
        raise BenchError(f"`{text}` was not answered; the bot's log:\n{bot.log_text()[-2000:]}")
    wall = time.perf_counter() - started
    calls = [c for c in emulators.calls_since(mark) if c.operation_id != "Blob"]
    return Search(
        wall,
        Counter(c.operation_id for c in calls if c.status != 429),
        sum(1 for c in calls if c.status == 429),
        found[0],
    )


_PROJECT_LINE = re.compile(r"^- \*[^*]+\* \(([0-9a-f]{8})…[^)]*\): (.*)$")
_SET = re.compile(r'^(workspace|iteration "([^"]+)"(?: \(published as "[^"]*"\))?): ([\d,]+) image')


def counts_in_answer(answer: str) -> dict[Scope, int]:
    """Return the counts find's answer shows, per (project, scope); raise BenchError when a
    project line does not read as expected."""
    counts: dict[Scope, int] = {}
    for line in answer.splitlines():
        project = _PROJECT_LINE.match(line)
        if project is None:
            continue
        for part in project.group(2).split("; "):
            found = _SET.match(part)
            if found is None:
                raise BenchError(f"unreadable part {part!r} of find's answer line {line!r}")
            scope = "workspace" if found.group(1) == "workspace" else found.group(2)
            counts[(project.group(1), scope)] = int(found.group(3).replace(",", ""))
    return counts


@dataclass(frozen=True)
class Baseline:
    """What the listing script found: image ids per (project, scope), and each scope's size."""

    by_metadata: dict[Scope, set[str]]
    by_tag: dict[Scope, set[str]]
    sizes: dict[Scope, int]

    def calls(self, page: int) -> int:
        """Return the calls the script makes with pages of `page` images: GetProjects, and per
        project GetIterations and its pages (a full last page needs one more, empty, read)."""
        projects = {p for p, _ in self.sizes}
        return 1 + len(projects) + sum(n // page + 1 for n in self.sizes.values())


def list_everything(client: TrainingClient) -> Baseline:
    """The script: list every image of every scope, 256 a page, and filter on the client."""
    by_metadata: dict[Scope, set[str]] = {}
    by_tag: dict[Scope, set[str]] = {}
    sizes: dict[Scope, int] = {}
    for project in client.get_projects():
        iterations = [it for it in client.get_iterations(project.id) if it.is_trained]
        scopes: list[tuple[str | None, str]] = [(None, "workspace")]
        scopes += [(it.id, it.name) for it in iterations]
        for iteration_id, name in scopes:
            where = (project.id[:8], name)
            sizes[where] = 0
            images = client.iter_images(project.id, iteration_id=iteration_id, page_size=PAGE)
            for image in images:
                sizes[where] += 1
                if image.metadata.get(KEY) == VALUE:
                    by_metadata.setdefault(where, set()).add(image.id)
                if _tagged(image):
                    by_tag.setdefault(where, set()).add(image.id)
    return Baseline(by_metadata, by_tag, sizes)


def _tagged(image: Image) -> bool:
    return any((t.tag_name or "").casefold() == TAG.casefold() for t in image.tags)


def _sizes(found: dict[Scope, set[str]]) -> dict[Scope, int]:
    return {scope: len(ids) for scope, ids in found.items()}


def _ids(found: dict[Scope, set[str]]) -> set[str]:
    return {i for ids in found.values() for i in ids}


def _check(what: str, search: Search, expected: dict[Scope, int]) -> None:
    shown = counts_in_answer(search.answer)
    if shown != expected:
        raise BenchError(
            f"{what} counted {sorted(shown.items())}, the baseline found "
            f"{sorted(expected.items())}; find's answer:\n{search.answer}"
        )


def measure(scale: Scale) -> Figures:
    """Run find (metadata, then tag name) and the listing script; return one run's figures."""
    size = SIZES[scale]
    seed = Seed(
        projects=size.projects,
        iterations=size.iterations,
        tags=4,
        images=size.images,
        predictions=0,
        image_bytes=64,
    )
    started = time.perf_counter()
    emulators = Emulators.start(seed, Faults(tps_cap=TPS))
    try:
        mine = seed_person(emulators.cv.data, size)
        seeding_s = time.perf_counter() - started
        with (
            scratch("search") as folder,
            BotProcess(emulators, folder, CUSTOM_VISION_TPS=f"{TPS:g}") as bot,
        ):
            by_metadata = _timed_find(emulators, bot, FIND)
            by_tag = _timed_find(emulators, bot, FIND_TAG)
            emulators.cv.faults.latency = LATENCY
            slow = _timed_find(emulators, bot, FIND)
            emulators.cv.faults.latency = 0.0
        # The script's calls do not depend on the limit: off, so it takes seconds, not minutes.
        emulators.cv.faults.tps_cap = None
        mark = emulators.mark()
        with TrainingClient(emulators.cv.endpoint, TRAINING_KEY, tps=1e6) as client:
            listed = list_everything(client)
        baseline_calls = len(emulators.calls_since(mark))
    finally:
        emulators.close()

    if _ids(listed.by_metadata) != mine:
        raise BenchError(
            f"the baseline found {len(_ids(listed.by_metadata))} images of the person's {len(mine)}"
        )
    if baseline_calls != listed.calls(PAGE):
        raise BenchError(f"the baseline made {baseline_calls} calls, {listed.calls(PAGE)} expected")
    _check("find --metadata", by_metadata, _sizes(listed.by_metadata))
    _check("find --tag-name", by_tag, _sizes(listed.by_tag))
    _check(f"find --metadata at {LATENCY * 1000:g} ms a call", slow, _sizes(listed.by_metadata))
    projects = len({p for p, _ in listed.sizes})
    least = 1 + projects + len(listed.sizes)  # GetProjects; GetIterations each; a count a scope
    small_pages = listed.calls(DEFAULT_PAGE)
    return {
        "projects": size.projects,
        "workspace_images": size.images,
        "iterations": size.iterations,
        "images": len(mine),
        "person_projects": len({p for p, _ in listed.by_metadata}),
        "scopes": len(listed.sizes),
        "find_calls": by_metadata.total,
        "find_count_calls": by_metadata.calls["GetImageCount"],
        "least_calls": least,
        "baseline_calls": baseline_calls,
        "baseline_default_page_calls": small_pages,
        "calls_ratio": report.ratio(baseline_calls, by_metadata.total),
        "default_page_ratio": report.ratio(small_pages, by_metadata.total),
        "target_calls": baseline_calls / CALLS_TARGET,
        "find_s": by_metadata.wall_s,
        "bound_s": by_metadata.bound_s,
        "find_over_bound": report.ratio(by_metadata.wall_s, by_metadata.bound_s),
        "find_throttled": by_metadata.throttled,
        "slow_s": slow.wall_s,
        "slow_over_bound": report.ratio(slow.wall_s, slow.bound_s),
        "slow_throttled": slow.throttled,
        "tag_calls": by_tag.total,
        "tag_tag_calls": by_tag.calls["GetTags"],
        "tag_s": by_tag.wall_s,
        "tag_over_bound": report.ratio(by_tag.wall_s, by_tag.bound_s),
        "tag_calls_ratio": report.ratio(baseline_calls, by_tag.total),
        "tag_throttled": by_tag.throttled,
        "seeding_s": seeding_s,
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    mul = report.MUL
    least = f["least_calls"]
    notes: tuple[str, ...] = ()
    if f["target_calls"] < least:
        notes = (
            "find makes the fewest calls its answer allows: GetProjects, and per project "
            "GetIterations and one GetImageCount ($filter, iterationId) per scope counted, "
            f"1 + {f['projects']:.0f} + {f['scopes']:,.0f} = {least:,.0f}. "
            f"{CALLS_TARGET:g}{mul} fewer than the {PAGE}-image listing would be "
            f"{f['target_calls']:,.0f} calls, so no search that counts every workspace and "
            "snapshot meets the call target at this size; against the same script reading "
            f"GetImages' default pages of {DEFAULT_PAGE}, find makes "
            f"{report.times(f['default_page_ratio'])} fewer calls.",
        )
    return Result(
        key="search",
        title="8. Search cost",
        setup=(
            f"{f['projects']:.0f} projects {mul} {f['workspace_images']:,.0f} images {mul} "
            f"{f['iterations']:.0f} trained iterations, one person on {f['images']:.0f} images "
            f"in {f['person_projects']:.0f} projects, cap {TPS:g} Training API calls/s"
        ),
        rows=(
            Row(
                f"`{FIND}`: Training API calls ({f['find_count_calls']:,.0f} of them "
                "GetImageCount)",
                report.count(f["find_calls"]),
            ),
            Row(
                "baseline: every image of every scope listed (GetImages, pages of "
                f"{PAGE}), filtered on the client; same images found",
                report.count(f["baseline_calls"]),
            ),
            Row(
                "baseline ÷ find calls",
                report.times(f["calls_ratio"]),
                report.at_least(CALLS_TARGET),
                f["calls_ratio"] >= CALLS_TARGET,
            ),
            Row("find: command → answer", report.seconds(f["find_s"])),
            Row(f"bound: find's calls ÷ {TPS:g}/s", report.seconds(f["bound_s"])),
            report.within("find ÷ bound", f["find_over_bound"], BOUND_TARGET),
            Row(
                "429 answers to find (context; each retried after its Retry-After)",
                report.count(f["find_throttled"]),
            ),
            report.within(
                f"find ÷ bound, each call taking {LATENCY * 1000:g} ms (a cloud region's "
                "latency: inferred)",
                f["slow_over_bound"],
                BOUND_TARGET,
            ),
            Row(
                f"`{FIND_TAG}` (context): calls ({f['tag_tag_calls']:,.0f} of them GetTags)",
                report.count(f["tag_calls"]),
            ),
            Row("… baseline ÷ its calls (context)", report.times(f["tag_calls_ratio"])),
            Row("… its time ÷ its bound (context)", report.times(f["tag_over_bound"])),
            Row(
                f"baseline with GetImages' default page of {DEFAULT_PAGE} (context, computed "
                "from the scope sizes listed)",
                report.count(f["baseline_default_page_calls"]),
            ),
            Row("seeding the emulator (context)", report.seconds(f["seeding_s"])),
        ),
        figures=f,
        notes=notes,
    )


BENCHMARK = Benchmark("search", measure, present)
