"""bot.training: pure retry/limit helpers, and the real client over HTTP against the emulator."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import threading
import time
import traceback
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
import requests

from bot.errors import (
    MalformedResponse,
    NotFound,
    QuotaExhausted,
    ServiceError,
    Throttled,
    TrainingApiError,
    TransportError,
    Unauthorized,
)
from bot.training import (
    MARGIN,
    MARGIN_HALF_LIFE,
    MARGIN_MAX,
    MARGIN_STEP,
    MAX_IMAGE_IDS,
    MAX_PREDICTION_IDS,
    RateLimiter,
    Slot,
    TrainingClient,
    backoff_delay,
    chunks,
    quota_wait,
    retry_after_hint,
    shared_limiter,
)
from bot.wording import describe_wait
from emulators.customvision import (
    CustomVisionEmulator,
    Exchange,
    Faults,
    Seed,
    busiest_second,
)
from tests.test_client_conformance import Sent, check_all, check_calls, recording_session

KEY = "test-training-key-Zq81x"
NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)


# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message", "expected"),
    [
        ("2", None, 2.0),
        ("0.5", "Please retry after 9 seconds.", 0.5),
        ("Fri, 27 Nov 2026 18:00:03 GMT", None, 3.0),
        ("Fri, 27 Nov 2026 17:59:00 GMT", None, 0.0),
        ("soon", "Rate limit is exceeded. Please retry after 1 second.", 1.0),
        ("-1", "Try again in 7 seconds.", 7.0),
        (
            None,
            "Requests to the Training API have exceeded the rate limit. Try again in 2 sec",
            2.0,
        ),
        (None, "Too many requests", None),
        ("", "", None),
        (None, None, None),
    ],
)
def test_retry_after_hint_reads_header_then_message(
    header: str | None, message: str | None, expected: float | None
) -> None:
    assert retry_after_hint(header, message, now=NOW) == expected


def test_backoff_delay_uses_capped_hint_else_full_jitter() -> None:
    rng = random.Random(7)
    assert backoff_delay(1, base=0.5, cap=30.0, hint=2.0, rng=rng) == 2.0
    assert backoff_delay(1, base=0.5, cap=1.5, hint=60.0, rng=rng) == 1.5
    for attempt in range(1, 12):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, base=0.5, cap=4.0, hint=None, rng=rng) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, not a fixed schedule
    same = random.Random(3), random.Random(3)
    assert backoff_delay(3, base=1, cap=9, hint=None, rng=same[0]) == same[1].uniform(0, 4)


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (0, 256, []),
        (1, 256, [1]),
        (256, 256, [256]),
        (257, 256, [256, 1]),
        (600, 256, [256, 256, 88]),
    ],
)
def test_chunks_respects_the_per_call_cap(count: int, size: int, expected: list[int]) -> None:
    items = list(range(count))
    parts = chunks(items, size)
    assert [len(p) for p in parts] == expected
    assert [x for p in parts for x in p] == items


class FakeTime:
    """A clock whose sleep moves it forward: the limiter's schedule without waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.starts: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def test_rate_limiter_starts_a_full_window_at_once_then_waits_for_its_oldest_call() -> None:
    fake = FakeTime()
    limiter = RateLimiter(4, clock=fake.clock, sleep=fake.sleep)
    slots = []
    for _ in range(4):
        slots.append(limiter.acquire())
        fake.starts.append(fake.now)
    assert fake.starts == [100.0] * 4  # no spacing inside the window: the service has none
    fake.now = 100.005
    for slot in slots[:2]:
        limiter.answered(slot)
    # The oldest call was answered at 100.005: the service counted it by then.
    limiter.acquire()
    assert fake.now == pytest.approx(101.005)
    # The second was answered too; the third and fourth were not: reckoned from their start
    # plus the margin.
    limiter.acquire()
    assert fake.now == pytest.approx(101.005)
    limiter.acquire()
    assert fake.now == pytest.approx(100.0 + MARGIN + 1.0)
    fake.now += 10  # idle time does not bank more than one window
    idle = fake.now
    for _ in range(5):
        limiter.acquire()
    assert fake.now == pytest.approx(idle + MARGIN + 1.0)


def test_rate_limiter_never_starts_more_than_rate_calls_within_a_window_of_their_answers() -> None:
    fake = FakeTime()
    rate = 10
    limiter = RateLimiter(rate, clock=fake.clock, sleep=fake.sleep)
    rng = random.Random(5)
    counted: list[tuple[float, float]] = []  # (start, answer): the service counts in between
    for _ in range(200):
        slot = limiter.acquire()
        start = fake.now
        fake.now += rng.choice([0.001, 0.01, 0.05, 0.3])  # the call's round trip
        limiter.answered(slot)
        counted.append((start, fake.now))
    # Worst case: each call counted at its answer, or start + margin if that is earlier.
    latest = sorted(min(answer, start + MARGIN) for start, answer in counted)
    starts = [start for start, _ in counted]
    for i, start in enumerate(starts):
        if i >= rate:
            assert start >= latest[i - rate] + 1.0 - 1e-9


def test_rate_limiter_a_429_widens_the_margin_and_answers_let_it_decay() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10, clock=fake.clock, sleep=fake.sleep)
    assert limiter.margin == pytest.approx(MARGIN)
    limiter.answered(limiter.acquire(), throttled=True)
    assert limiter.margin == pytest.approx(MARGIN_STEP)
    limiter.answered(limiter.acquire(), throttled=True)
    assert limiter.margin == pytest.approx(min(MARGIN_MAX, 2 * MARGIN_STEP))
    for _ in range(5):
        limiter.answered(limiter.acquire(), throttled=True)
    assert limiter.margin == pytest.approx(MARGIN_MAX)
    for _ in range(MARGIN_HALF_LIFE):
        limiter.answered(limiter.acquire())
    assert limiter.margin == pytest.approx(MARGIN_MAX / 2)
    for _ in range(20 * MARGIN_HALF_LIFE):
        limiter.answered(limiter.acquire())
    assert limiter.margin == pytest.approx(MARGIN)  # never below the base
    assert limiter.throttled_count == 7


@pytest.mark.parametrize(
    ("rate", "per_window", "window"), [(0.5, 1, 2.0), (2.5, 2, 0.8), (1, 1, 1.0)]
)
def test_rate_limiter_keeps_whole_calls_for_fractional_rates(
    rate: float, per_window: int, window: float
) -> None:
    fake = FakeTime()
    limiter = RateLimiter(rate, clock=fake.clock, sleep=fake.sleep)
    for _ in range(per_window):
        limiter.answered(limiter.acquire())
    assert fake.now == 100.0
    limiter.acquire()
    assert fake.now == pytest.approx(100.0 + window)
    limiter.lower_rate(rate / 2)
    assert limiter.rate == rate / 2


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_rate_limiter_rejects_rates_that_are_not_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        RateLimiter(rate)


def test_shared_limiter_is_one_per_endpoint_and_the_lowest_rate_wins() -> None:
    first = shared_limiter("http://limiter-test.invalid:81", 50)
    same = shared_limiter("HTTP://LIMITER-TEST.invalid:81/", 20)
    other = shared_limiter("http://limiter-test.invalid:82", 50)
    assert first is same and first.rate == 20
    assert other is not first and other.rate == 50
    with (
        TrainingClient("http://limiter-test.invalid:81", KEY, tps=30) as a,
        TrainingClient("http://limiter-test.invalid:81/", KEY, tps=40) as b,
    ):
        assert a.limiter is b.limiter is first
        assert a.limiter.rate == 20
    own = RateLimiter(3)
    with TrainingClient("http://limiter-test.invalid:81", KEY, limiter=own) as c:
        assert c.limiter is own


def test_training_client_repr_and_errors_never_show_the_key() -> None:
    with TrainingClient("https://res.cognitiveservices.azure.com/", KEY) as client:
        assert KEY not in repr(client)
        assert repr(client) == (
            "TrainingClient(endpoint='https://res.cognitiveservices.azure.com', tps=10.0)"
        )
        assert client.endpoint_host == "res.cognitiveservices.azure.com"
    for bad_key in ("", "has space-Zq81x", "new\nline-Zq81x", "ünïcode-Zq81x"):
        with pytest.raises(ValueError) as caught:
            TrainingClient("https://res.cognitiveservices.azure.com", bad_key)
        assert "Zq81x" not in str(caught.value)


@pytest.mark.parametrize(
    ("endpoint", "kwargs", "message"),
    [
        ("res.cognitiveservices.azure.com", {}, "endpoint must be an http"),
        ("ftp://res", {}, "endpoint must be an http"),
        ("https://res", {"timeout": 0}, "timeout must be positive"),
        ("https://res", {"max_attempts": 0}, "max_attempts must be at least 1"),
        ("https://res", {"backoff_cap": -1}, "must not be negative"),
    ],
)
def test_training_client_rejects_bad_settings(
    endpoint: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingClient(endpoint, KEY, **kwargs)


# -- the real client over HTTP against the emulator --------------------------------------------


@dataclass
class Rig:
    """An emulator, a client pointed at it, and what the client sent and slept."""

    emu: CustomVisionEmulator
    client: TrainingClient
    sent: list[Sent]
    sleeps: list[float]
    session: requests.Session
    key: str
    bodies: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return self.emu.data.project_ids()[0]

    def statuses(self, operation: str) -> list[int]:
        return [c.status for c in self.emu.calls_to(operation)]

    def wait_calls(self, operation: str, count: int) -> None:
        """Wait for slow handlers (latency faults) to record their call: not a timing check."""
        deadline = time.monotonic() + 10
        while len(self.emu.calls_to(operation)) < count and time.monotonic() < deadline:
            time.sleep(0.01)


SMALL = Seed(projects=1, iterations=2, tags=4, images=20, predictions=10, image_bytes=512)
MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig() -> Iterator[MakeRig]:
    """Build rigs; at teardown stop them and check every request sent against the spec."""
    rigs: list[Rig] = []

    def make(
        seed: Seed | None = SMALL,
        faults: Faults | None = None,
        *,
        key: str = KEY,
        on_sleep: Callable[[float], None] | None = None,
        **settings: Any,
    ) -> Rig:
        emu = CustomVisionEmulator(KEY, seed=seed, faults=faults).start()
        session, sent = recording_session()
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if on_sleep is not None:
                on_sleep(seconds)

        options: dict[str, Any] = {
            "tps": 1000.0,
            "timeout": 2.0,
            "max_attempts": 3,
            "backoff_base": 0.001,
            "backoff_cap": 30.0,
            "sleep": sleep,
        }
        options.update(settings)
        client = TrainingClient(emu.endpoint, key, session=session, **options)
        rig = Rig(emu, client, sent, sleeps, session, key)

        def keep_body(exchange: Exchange) -> None:
            if exchange.origin == "service" and exchange.status == 200:
                rig.bodies.setdefault(exchange.operation_id, []).append(exchange.response_body)

        emu.hooks.append(keep_body)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.client.close()
        rig.session.close()
        rig.emu.stop()
    for rig in rigs:
        assert rig.emu.hook_errors == []
        assert check_all(rig.sent, rig.key) == []
        assert check_calls(rig.emu.calls) == []


def test_training_client_reads_return_models_that_round_trip_the_wire(make_rig: MakeRig) -> None:
    rig = make_rig()
    client, data, p = rig.client, rig.emu.data, rig.project
    domains = client.get_domains()
    projects = client.get_projects()
    project = client.get_project(p)
    iterations = client.get_iterations(p)
    one = client.get_iteration(p, iterations[0].id)
    performance = client.get_iteration_performance(p, one.id, threshold=0.9, overlap_threshold=0.3)
    exports = client.get_exports(p, one.id)
    tags = client.get_tags(p)
    snapshot_tags = client.get_tags(p, iterations[0].id)
    tag = client.get_tag(p, tags[0].id)
    snapshot_tag = client.get_tag(p, snapshot_tags[0].id, iterations[0].id)

    assert [x.id for x in projects] == data.project_ids() == [project.id]
    assert [x.id for x in iterations] == data.iteration_ids(p)
    assert one == iterations[0]
    assert [x.id for x in tags] == data.tag_ids(p)
    assert [x.id for x in snapshot_tags] == data.tag_ids(p, iterations[0].id)
    assert (tag.id, snapshot_tag.id) == (tags[0].id, snapshot_tags[0].id)
    assert {t.id for t in performance.per_tag_performance} <= set(data.tag_ids(p, one.id))
    assert all(isinstance(e.download_uri, str) for e in exports)
    # to_dict() gives back exactly the JSON that came over the wire.
    assert [x.to_dict() for x in domains] == rig.bodies["GetDomains"][0]
    assert [x.to_dict() for x in projects] == rig.bodies["GetProjects"][0]
    assert project.to_dict() == rig.bodies["GetProject"][0]
    assert [x.to_dict() for x in iterations] == rig.bodies["GetIterations"][0]
    assert performance.to_dict() == rig.bodies["GetIterationPerformance"][0]
    assert [x.to_dict() for x in exports] == rig.bodies["GetExports"][0]
    assert [x.to_dict() for x in tags] == rig.bodies["GetTags"][0]
    assert tag.to_dict() == rig.bodies["GetTag"][0]
    assert rig.emu.calls_to("GetIterationPerformance")[0].query == {
        "threshold": "0.9",
        "overlapThreshold": "0.3",
    }


@pytest.mark.parametrize(("count", "calls"), [(0, 1), (1, 1), (256, 2), (257, 2)])
def test_training_client_iter_images_pages_until_a_short_page(
    make_rig: MakeRig, count: int, calls: int
) -> None:
    rig = make_rig(seed=None)
    p = rig.emu.data.add_project("paging")
    rig.emu.data.add_images(p, count)
    images = list(rig.client.iter_images(p))
    assert [i.id for i in images] == rig.emu.data.image_ids(p)  # oldest first, no gaps
    pages = rig.emu.calls_to("GetImages")
    assert len(pages) == calls
    assert [c.query for c in pages] == [
        {"orderBy": "Oldest", "take": "256", "skip": str(256 * n)} for n in range(calls)
    ]
    assert rig.client.count_images(p) == count


def test_training_client_lists_and_counts_each_kind_and_filter(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None)
    data, client = rig.emu.data, rig.client
    p = data.add_project("kinds")
    cat, dog = data.add_tag(p, "cat"), data.add_tag(p, "dog")
    cats = data.add_images(p, 5, tag_ids=[cat])
    dogs = data.add_images(p, 3, tag_ids=[dog])
    untagged = data.add_images(p, 4)
    it = data.add_iteration(p)
    later = data.add_images(p, 2, tag_ids=[cat, dog])

    def ids(**kw: Any) -> list[str]:
        return [i.id for i in client.iter_images(p, page_size=5, **kw)]

    assert ids() == cats + dogs + untagged + later
    assert ids(kind="tagged") == cats + dogs + later
    assert ids(kind="tagged", tag_ids=[dog]) == dogs + later
    assert ids(kind="all", tag_ids=[cat]) == cats + later
    assert ids(kind="untagged") == untagged
    assert ids(iteration_id=it) == cats + dogs + untagged
    assert ids(kind="untagged", iteration_id=it) == untagged
    assert client.count_images(p) == 14
    assert client.count_images(p, kind="tagged") == 10
    assert client.count_images(p, kind="tagged", tag_ids=[dog]) == 5
    assert client.count_images(p, kind="untagged") == 4
    assert client.count_images(p, kind="untagged", iteration_id=it) == 4
    assert client.count_images(p, kind="all", iteration_id=it) == 12
    page = client.get_images_page(p, kind="tagged", skip=2, take=2, order_by="Newest")
    assert [i.id for i in page] == list(reversed(cats + dogs + later))[2:4]
    assert rig.emu.calls_to("GetTaggedImages")[-1].query == {
        "orderBy": "Newest",
        "take": "2",
        "skip": "2",
    }
    with pytest.raises(ValueError, match="tag_ids cannot filter untagged"):
        client.iter_images(p, kind="untagged", tag_ids=[cat])


def test_training_client_get_images_by_ids_batches_by_256(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None)
    p = rig.emu.data.add_project("by-ids")
    ids = rig.emu.data.add_images(p, 300)
    unknown = str(uuid.UUID(int=7))
    images = rig.client.get_images_by_ids(p, [*ids, unknown])
    assert {i.id for i in images} == set(ids)
    calls = rig.emu.calls_to("GetImagesByIds")
    assert [len(c.query["imageIds"].split(",")) for c in calls] == [256, 45]
    assert rig.client.get_images_by_ids(p, []) == []
    assert len(rig.emu.calls_to("GetImagesByIds")) == 2


def test_training_client_deletes_600_images_in_3_calls(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None)
    p = rig.emu.data.add_project("erase")
    ids = rig.emu.data.add_images(p, 600)
    statuses = [rig.client.delete_images(p, batch) for batch in chunks(ids, MAX_IMAGE_IDS)]
    assert statuses == [202, 202, 202]
    calls = rig.emu.calls_to("DeleteImages")
    assert [len(c.query["imageIds"].split(",")) for c in calls] == [256, 256, 88]
    assert [c.query["allIterations"] for c in calls] == ["true"] * 3
    assert [x for c in calls for x in c.query["imageIds"].split(",")] == ids
    assert rig.emu.deleted_image_counts() == Counter(dict.fromkeys(ids, 1))
    assert rig.client.count_images(p) == 0


def test_training_client_delete_images_workspace_only_answers_204(make_rig: MakeRig) -> None:
    rig = make_rig()
    p = rig.project
    first = rig.emu.data.iteration_ids(p)[0]
    image = rig.emu.data.image_ids(p, first)[0]
    assert rig.client.delete_images(p, [image], all_iterations=False) == 204
    assert rig.emu.calls_to("DeleteImages")[0].query["allIterations"] == "false"
    assert not rig.emu.data.has_image(p, image)
    assert rig.emu.data.has_image(p, image, first)  # the iteration keeps its snapshot


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda c, p: c.delete_images(p, [str(uuid.UUID(int=i)) for i in range(257)]),
            "at most 256",
        ),
        (lambda c, p: c.delete_images(p, []), "image_ids is empty"),
        (
            lambda c, p: c.delete_predictions(p, [str(uuid.UUID(int=i)) for i in range(65)]),
            "at most 64",
        ),
        (lambda c, p: c.delete_predictions(p, []), "prediction_ids is empty"),
        (lambda c, p: c.get_images_page(p, take=257), "take must be between 1 and 256"),
        (lambda c, p: c.get_images_page(p, take=0), "take must be between 1 and 256"),
        (lambda c, p: c.get_images_page(p, skip=-1), "skip must not be negative"),
        (lambda c, p: c.get_images_page(p, order_by="newest"), "order_by must be one of"),
        (lambda c, p: c.get_images_page(p, kind="some"), "kind must be one of"),
        (
            lambda c, p: c.iter_images(p, tag_ids=[str(uuid.UUID(int=i)) for i in range(21)]),
            "at most 20",
        ),
        (lambda c, p: c.iter_images(p, page_size=300), "page_size must be between"),
        (lambda c, p: c.query_predictions(p, max_count=0), "max_count must be between"),
        (
            lambda c, p: c.get_iteration_performance(p, p, threshold=1.5),
            "threshold must be between",
        ),
        (lambda c, p: c.download("", Path("x")), "download URI is empty"),
        (lambda c, p: c.download("file:///etc/passwd", Path("x")), "cannot download a 'file' URI"),
        (lambda c, p: c.download("i-1/o-2", Path("x")), "needs project_id"),
    ],
)
def test_training_client_rejects_bad_arguments_without_any_call(
    make_rig: MakeRig, call: Callable[[TrainingClient, str], Any], message: str
) -> None:
    rig = make_rig()
    with pytest.raises(ValueError, match=message):
        call(rig.client, rig.project)
    assert rig.emu.calls == [] and rig.sent == []


BAD = "not-a-guid'--"
OK = "bc3f7dad-5544-468c-8573-3ef04d55463e"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_project(BAD),
        lambda c: c.get_iterations(BAD),
        lambda c: c.get_iteration(OK, BAD),
        lambda c: c.get_iteration_performance(BAD, OK),
        lambda c: c.get_exports(OK, BAD),
        lambda c: c.get_tags(OK, BAD),
        lambda c: c.get_tag(OK, BAD),
        lambda c: c.get_tag(OK, OK, BAD),
        lambda c: c.get_images_page(OK, iteration_id=BAD),
        lambda c: c.iter_images(OK, tag_ids=[OK, BAD]),
        lambda c: c.iter_images(OK, tag_ids=BAD),
        lambda c: c.count_images(BAD),
        lambda c: c.get_images_by_ids(OK, [OK] * 300 + [BAD]),
        lambda c: c.query_predictions(BAD),
        lambda c: c.query_predictions(OK, {"iterationId": BAD}),
        lambda c: c.iter_predictions(BAD),
        lambda c: c.download("i-1/o-2", Path("x"), project_id=BAD),
        lambda c: c.delete_project(BAD),
        lambda c: c.delete_iteration(OK, BAD),
        lambda c: c.unpublish_iteration(BAD, OK),
        lambda c: c.delete_tag(OK, BAD),
        lambda c: c.delete_images(OK, [OK, BAD]),
        lambda c: c.delete_predictions(OK, [BAD]),
    ],
)
def test_training_client_validates_every_guid_before_any_call(
    make_rig: MakeRig, call: Callable[[TrainingClient], Any]
) -> None:
    rig = make_rig()
    with pytest.raises(ValueError) as caught:
        call(rig.client)
    assert BAD in str(caught.value)
    assert rig.emu.calls == [] and rig.sent == []


def test_training_client_follows_the_prediction_token_then_deletes_by_64(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    p = rig.project
    rig.emu.data.add_predictions(p, 60)  # 70 in all
    predictions = list(rig.client.iter_predictions(p, max_count=32))
    assert [x.id for x in predictions] == rig.emu.data.prediction_ids(p)  # oldest first
    bodies = [c for c in rig.sent if c.path.endswith("/predictions/query")]
    assert [json.loads(b.body or b"")["maxCount"] for b in bodies] == [32, 32, 32]
    assert json.loads(bodies[0].body or b"") == {"maxCount": 32, "orderBy": "Oldest"}
    assert json.loads(bodies[1].body or b"")["continuation"] != ""
    page = rig.client.query_predictions(p, max_count=5)
    assert page.has_more and len(page.results) == 5
    ids = [x.id for x in predictions]
    assert [rig.client.delete_predictions(p, b) for b in chunks(ids, MAX_PREDICTION_IDS)] == [
        204,
        204,
    ]
    assert rig.emu.data.prediction_ids(p) == []
    assert list(rig.client.iter_predictions(p)) == []


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "wording"),
    [(True, "customvision"), (False, "customvision"), (False, "apim")],
)
def test_training_client_retries_429_after_the_wait_it_asks_for(
    make_rig: MakeRig, header: bool, wording: Literal["customvision", "apim"]
) -> None:
    faults = Faults(tps_cap=1, retry_after_header=header, throttle_wording=wording)
    rig = make_rig(faults=faults, on_sleep=lambda _: setattr(faults, "tps_cap", None))
    rig.client.get_domains()  # fills the emulator's one-call window
    assert [p.id for p in rig.client.get_projects()] == rig.emu.data.project_ids()
    assert rig.statuses("GetProjects") == [429, 200]
    assert rig.sleeps == [1.0]  # the Retry-After header, else the message's "1 second(s)"


def test_training_client_caps_the_requested_wait(make_rig: MakeRig) -> None:
    faults = Faults(tps_cap=1)
    rig = make_rig(
        faults=faults, backoff_cap=0.25, on_sleep=lambda _: setattr(faults, "tps_cap", None)
    )
    rig.client.get_domains()
    rig.client.get_domains()
    assert rig.sleeps == [0.25]


@pytest.mark.parametrize(
    ("switch", "value", "first_status"),
    [
        ("error_rate", 1.0, {500, 503}),
        ("drop_rate", 1.0, {0}),
        ("latency", 0.3, {200}),  # the client timed out at 0.1 s; the emulator answered later
    ],
)
def test_training_client_retries_5xx_dropped_connections_and_timeouts(
    make_rig: MakeRig, switch: str, value: float, first_status: set[int]
) -> None:
    faults = Faults()
    setattr(faults, switch, value)
    rig = make_rig(faults=faults, timeout=0.1, on_sleep=lambda _: setattr(faults, switch, 0.0))
    assert [p.id for p in rig.client.get_projects()] == rig.emu.data.project_ids()
    rig.wait_calls("GetProjects", 2)
    statuses = rig.statuses("GetProjects")
    assert len(statuses) == 2 and 200 in statuses
    assert set(statuses) - {200} <= first_status
    assert len(rig.sleeps) == 1 and 0 <= rig.sleeps[0] <= 0.001  # full jitter below base


@pytest.mark.parametrize(
    ("faults", "error", "status", "code"),
    [
        (Faults(error_rate=1.0), ServiceError, {500, 503}, {"ErrorUnknown", "503"}),
        (Faults(drop_rate=1.0), TransportError, {None}, {None}),
        (Faults(latency=0.3), TransportError, {None}, {None}),
        (Faults(fail_after={"GetProjects": 0}), ServiceError, {500}, {"ErrorUnknown"}),
    ],
)
def test_training_client_gives_up_after_max_attempts_with_a_typed_error(
    make_rig: MakeRig,
    faults: Faults,
    error: type[TrainingApiError],
    status: set[Any],
    code: set[Any],
) -> None:
    rig = make_rig(faults=faults, timeout=0.1, max_attempts=3)
    with pytest.raises(error) as caught:
        rig.client.get_projects()
    assert type(caught.value) is error
    assert caught.value.status in status and caught.value.code in code
    assert caught.value.operation == "GetProjects"
    assert "GetProjects" in caught.value.user_message
    assert "after 3 attempts" in caught.value.user_message
    rig.wait_calls("GetProjects", 3)
    assert len(rig.emu.calls_to("GetProjects")) == 3
    assert len(rig.sleeps) == 2


def test_training_client_gives_up_on_persistent_throttling(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(tps_cap=1), max_attempts=4)
    rig.client.get_domains()
    with pytest.raises(Throttled) as caught:
        rig.client.get_projects()
    assert (caught.value.status, caught.value.code, caught.value.operation) == (
        429,
        "429",
        "GetProjects",
    )
    assert caught.value.user_message == (
        "Custom Vision kept throttling GetProjects (HTTP 429) after 4 attempts; "
        "try again in a few minutes."
    )
    assert rig.statuses("GetProjects") == [429] * 4


def test_training_client_every_attempt_takes_a_limiter_slot(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    class Counting(RateLimiter):
        def __init__(self) -> None:
            super().__init__(1000)
            self.count = 0

        def acquire(self) -> Slot:
            self.count += 1
            return super().acquire()

    limiter = Counting()
    faults = Faults(error_rate=1.0)
    rig = make_rig(
        faults=faults, limiter=limiter, on_sleep=lambda _: setattr(faults, "error_rate", 0.0)
    )
    rig.client.get_projects()
    assert limiter.count == 2  # the retry too
    image = rig.client.get_images_page(rig.project, take=1)[0]
    assert image.original_image_uri is not None
    before = limiter.count
    rig.client.download(image.original_image_uri, tmp_path / "blob.png")
    assert limiter.count == before  # blob links are not Training API calls


# -- deletes whose first attempt had an unknown outcome -----------------------------------------


def _ambiguous(rig: Rig, faults: Faults, operation: str) -> Callable[[float], None]:
    """A sleep that lets the timed-out first attempt finish on the emulator, then heals it."""

    def heal(_: float) -> None:
        faults.latency = 0.0
        rig.wait_calls(operation, 1)

    return heal


@pytest.mark.parametrize(
    ("operation", "call", "first_then_retry"),
    [
        ("DeleteProject", lambda c, d, p: c.delete_project(d.add_project("gone")), (204, 404)),
        ("DeleteTag", lambda c, d, p: c.delete_tag(p, d.tag_ids(p)[0]), (204, 404)),
        (
            "DeleteIteration",
            lambda c, d, p: c.delete_iteration(p, d.iteration_ids(p)[-1]),
            (204, 404),
        ),
        (
            "UnpublishIteration",
            lambda c, d, p: c.unpublish_iteration(p, d.iteration_ids(p)[0]),
            (204, 400),
        ),
        (
            # The code of "not published" is a guess; the generic one must work as well.
            "UnpublishIteration/BadRequest",
            lambda c, d, p: c.unpublish_iteration(p, d.iteration_ids(p)[0]),
            (204, 400),
        ),
    ],
)
def test_training_client_delete_retry_finding_it_gone_counts_as_done(
    make_rig: MakeRig,
    operation: str,
    call: Callable[[TrainingClient, Any, str], int],
    first_then_retry: tuple[int, int],
) -> None:
    operation, _, variant = operation.partition("/")
    faults = Faults(unpublish_unpublished=variant or "BadRequestIterationNotPublished")  # type: ignore[arg-type]
    holder: list[Rig] = []
    rig = make_rig(
        faults=faults,
        timeout=0.1,
        on_sleep=lambda s: _ambiguous(holder[0], faults, operation)(s),
    )
    holder.append(rig)
    p = rig.project
    faults.latency = 0.3  # the first attempt times out at the client but completes at the service
    assert call(rig.client, rig.emu.data, p) == 204
    assert tuple(rig.statuses(operation)) == first_then_retry


def test_training_client_delete_not_found_stays_an_error_when_nothing_was_ambiguous(
    make_rig: MakeRig,
) -> None:
    faults = Faults(tps_cap=1)
    rig = make_rig(faults=faults, on_sleep=lambda _: setattr(faults, "tps_cap", None))
    unknown = str(uuid.UUID(int=99))
    rig.client.get_domains()
    # A 429 means the gateway refused the call: NotFound on the retry is the real answer.
    with pytest.raises(NotFound) as caught:
        rig.client.delete_project(unknown)
    assert rig.statuses("DeleteProject") == [429, 404]
    assert (caught.value.code, caught.value.status) == ("NotFoundProject", 404)
    with pytest.raises(NotFound):
        rig.client.delete_tag(rig.project, unknown)  # first attempt: an error, not "done"
    published = rig.emu.data.iteration_ids(rig.project)[1]
    with pytest.raises(ServiceError) as refused:
        rig.client.unpublish_iteration(rig.project, published)
    assert refused.value.code == "BadRequestIterationNotPublished"


# -- the rate limiter across threads and clients -----------------------------------------------


def test_training_client_limiter_holds_8_threads_of_2_clients_under_the_cap(
    make_rig: MakeRig,
) -> None:
    cap = 20
    rig = make_rig(faults=Faults(tps_cap=cap), tps=cap, on_sleep=time.sleep)
    with TrainingClient(rig.emu.endpoint, KEY, session=rig.session, tps=cap) as second:
        assert second.limiter is rig.client.limiter  # one limiter per endpoint in a process
        clients = [rig.client, second]
        errors: list[BaseException] = []

        def work(client: TrainingClient) -> None:
            try:
                for _ in range(6):
                    client.get_domains()
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(clients[i % 2],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    calls = rig.emu.calls_to("GetDomains")
    assert len(calls) == 48 > 2 * cap  # enough calls that an unlimited client would break the cap
    assert rig.statuses("GetDomains") == [200] * 48
    assert busiest_second(calls) == cap  # the window filled, never over


def test_training_client_keeps_the_service_rate_in_a_steady_stream_without_a_429(
    make_rig: MakeRig,
) -> None:
    cap = 20
    rig = make_rig(faults=Faults(tps_cap=cap), tps=cap, on_sleep=time.sleep)
    for _ in range(3 * cap):
        rig.client.get_domains()
    assert rig.statuses("GetDomains") == [200] * 3 * cap
    assert busiest_second(rig.emu.calls) == cap
    assert rig.client.limiter.throttled_count == 0


def test_training_client_waits_out_a_429_and_widens_so_jitter_draws_no_second(
    make_rig: MakeRig,
) -> None:
    cap = 20
    # Requests reach the gateway up to 120 ms late, in random order: beyond the old 5% spacing
    # (50 ms at 20/s) and the limiter's first margin, within its margin after a 429.
    jitter = 0.6 * MARGIN_STEP
    assert MARGIN < jitter < MARGIN_STEP
    faults = Faults(tps_cap=cap)
    rig = make_rig(faults=faults, tps=cap, on_sleep=time.sleep)
    # Another program on the same resource takes the whole window first.
    with requests.Session() as other:
        for _ in range(cap):
            answer = other.get(
                f"{rig.emu.endpoint}/customvision/v3.3/training/domains",
                headers={"Training-Key": KEY},
                timeout=5,
            )
            assert answer.status_code == 200
    faults.admission_jitter = jitter
    mark = len(rig.emu.calls)
    rig.client.get_domains()  # refused once: waits the second it is told, then answered
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(cap):
                rig.client.get_domains()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    # Four threads: more than the cap asks at once, so the limiter holds the window.
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    calls = rig.emu.calls[mark:]
    statuses = [c.status for c in calls]
    assert statuses == [429] + [200] * (4 * cap + 1)
    refused, retried = calls[0], calls[1]
    assert refused.admitted is not None and retried.admitted is not None
    assert retried.admitted - refused.admitted >= 1.0  # Retry-After: 1, honoured
    assert rig.sleeps == [1.0]
    assert rig.client.limiter.throttled_count == 1
    assert busiest_second(rig.emu.calls) == cap


# -- errors: typed, with user messages, never with the key -------------------------------------


def test_training_client_maps_error_shapes_to_typed_errors(make_rig: MakeRig) -> None:
    rig = make_rig()
    unknown = str(uuid.UUID(int=5))
    with pytest.raises(NotFound) as not_found:
        rig.client.get_project(unknown)
    assert (not_found.value.status, not_found.value.code, not_found.value.operation) == (
        404,
        "NotFoundProject",
        "GetProject",
    )
    assert not_found.value.user_message.startswith(
        "Custom Vision refused GetProject (HTTP 404, NotFoundProject): "
    )
    assert re.search(r"\(request id [0-9a-f-]{36}\)$", not_found.value.user_message)
    published = rig.emu.data.iteration_ids(rig.project)[0]
    with pytest.raises(ServiceError) as refused:
        rig.client.delete_iteration(rig.project, published)
    assert type(refused.value) is ServiceError
    assert (refused.value.status, refused.value.code) == (400, "BadRequestIterationIsPublished")
    assert rig.statuses("DeleteIteration") == [400]  # a 4xx is final: no retry


def test_training_client_bad_key_is_unauthorized_with_a_config_hint(make_rig: MakeRig) -> None:
    wrong = "wrong-key-Qm7302"
    rig = make_rig(key=wrong)
    with pytest.raises(Unauthorized) as caught:
        rig.client.get_projects()
    assert caught.value.user_message == (
        "Custom Vision refused the training key for GetProjects (HTTP 401). "
        "Check CUSTOM_VISION_TRAINING_KEY and CUSTOM_VISION_ENDPOINT."
    )
    assert (caught.value.status, caught.value.code) == (401, "401")
    assert rig.statuses("GetProjects") == [401]
    assert_key_absent(caught.value, wrong)


def assert_key_absent(exc: BaseException, key: str) -> None:
    texts = [
        str(exc),
        repr(exc),
        repr(exc.args),
        getattr(exc, "user_message", ""),
        "".join(traceback.format_exception(exc)),
    ]
    assert all(key not in text for text in texts)


ERROR_CASES: list[tuple[str, Faults, Callable[[Rig, Path], Any], type[TrainingApiError]]] = [
    ("not-found", Faults(), lambda r, d: r.client.get_tag(r.project, OK), NotFound),
    ("server", Faults(error_rate=1.0), lambda r, d: r.client.get_projects(), ServiceError),
    ("throttled", Faults(tps_cap=0.5), lambda r, d: r.client.get_domains(), Throttled),
    ("dropped", Faults(drop_rate=1.0), lambda r, d: r.client.get_domains(), TransportError),
    ("timeout", Faults(latency=0.3), lambda r, d: r.client.get_domains(), TransportError),
    (
        "truncated",
        Faults(blob_truncate_rate=1.0),
        lambda r, d: r.client.download(
            r.client.get_images_page(r.project, take=1)[0].original_image_uri or "", d / "f"
        ),
        MalformedResponse,
    ),
    (
        "malformed",
        Faults(),
        lambda r, d: (
            # not a string: what a malformed answer holds, which the types rightly refuse
            r.emu.data.add_images(r.project, 1, metadata={"k": 1}),  # type: ignore[dict-item]
            list(r.client.iter_images(r.project)),
        ),
        MalformedResponse,
    ),
]


@pytest.mark.parametrize(
    ("faults", "call", "error"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_training_client_key_never_appears_in_errors_or_logs(
    make_rig: MakeRig,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    faults: Faults,
    call: Callable[[Rig, Path], Any],
    error: type[TrainingApiError],
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = make_rig(faults=faults, timeout=0.1)
    if faults.tps_cap is not None:
        rig.client.get_projects()
    with pytest.raises(error) as caught:
        call(rig, tmp_path)
    assert type(caught.value) is error
    assert_key_absent(caught.value, KEY)
    assert caught.value.operation is not None
    assert KEY not in caplog.text
    assert KEY not in repr(rig.client)


def test_training_client_malformed_body_names_the_operation(make_rig: MakeRig) -> None:
    rig = make_rig()
    # not a string: what a malformed answer holds, which the types rightly refuse
    rig.emu.data.add_images(rig.project, 1, metadata={"subject": 17})  # type: ignore[dict-item]
    with pytest.raises(MalformedResponse) as caught:
        list(rig.client.iter_images(rig.project))
    assert caught.value.user_message == (
        "The response of Custom Vision to GetImages was not valid: "
        "Image[20].metadata.subject: expected a string, got a number."
    )
    assert (caught.value.operation, caught.value.status) == ("GetImages", 200)


class CannedServer:
    """A throwaway server for bodies the emulator never sends (HTML pages, broken JSON).

    The emulator only answers spec-shaped or gateway-shaped bodies, so this is the one place
    the client meets a server that is not the emulator.
    """

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        canned = (status, body, content_type)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, body, content_type = canned
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.mark.parametrize(
    ("status", "body", "content_type", "detail"),
    [
        (200, b"<html><body>Sign in</body></html>", "text/html", "not JSON (text/html)"),
        (200, b'[{"id": ', "application/json", "not JSON (application/json)"),
        (200, b"", "application/json", "HTTP 200 without a body"),
        (200, b'{"id": "x"}', "application/json", "Project[]: expected an array, got an object"),
        (
            404,
            b"<html>404</html>",
            "text/html",
            "HTTP 404 without a Custom Vision error body. Check CUSTOM_VISION_ENDPOINT",
        ),
        (
            400,
            b'{"unexpected": true}',
            "application/json",
            "HTTP 400 without a Custom Vision error body",
        ),
    ],
)
def test_training_client_non_json_or_wrong_shape_is_malformed(
    status: int, body: bytes, content_type: str, detail: str
) -> None:
    server = CannedServer(status, body, content_type)
    try:
        with (
            TrainingClient(server.endpoint, KEY, max_attempts=1) as client,
            pytest.raises(MalformedResponse) as caught,
        ):
            client.get_projects()
    finally:
        server.close()
    assert caught.value.user_message.startswith(
        "The response of Custom Vision to GetProjects was not valid: " + detail
    )
    assert (caught.value.operation, caught.value.status) == ("GetProjects", status)
    assert_key_absent(caught.value, KEY)


# -- downloads ---------------------------------------------------------------------------------


def _no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_training_client_downloads_blob_links_byte_for_byte_without_the_key(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = make_rig()
    images = rig.client.get_images_page(rig.project, take=3)
    for image in images:
        assert image.original_image_uri is not None
        assert image.original_image_uri.startswith("http")
        got = rig.client.download(image.original_image_uri, tmp_path / "out" / f"{image.id}.png")
        expected = rig.emu.image_bytes(image.id)
        assert got.path.read_bytes() == expected
        assert (got.size, got.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
    blobs = rig.emu.calls_to("Blob")
    assert len(blobs) == 3 and not any(c.key_sent for c in blobs)
    assert _no_partial_files(tmp_path / "out")


def test_training_client_download_follows_a_storage_redirect_without_the_key(
    tmp_path: Path,
) -> None:
    # Blob GETs bypass Session.request (bot.training TrainingClient._blob_get), so the
    # client follows a redirect itself, as requests would have.
    seen: list[tuple[str, str | None]] = []
    body = b"moved blob bytes"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Training-Key")))
            if self.path.startswith("/old"):
                self.send_response(307)
                self.send_header("Location", "/new/blob.png?sig=fresh")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        storage = f"http://127.0.0.1:{server.server_address[1]}"
        with TrainingClient("https://cv.invalid", KEY) as client:
            got = client.download(f"{storage}/old/blob.png?sig=old", tmp_path / "b.png")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert got.path.read_bytes() == body
    assert seen == [("/old/blob.png?sig=old", None), ("/new/blob.png?sig=fresh", None)]


def test_training_client_downloads_vnet_paths_through_get_artifact(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = make_rig(faults=Faults(vnet=True))
    image = rig.client.get_images_page(rig.project, take=1)[0]
    relative = image.original_image_uri
    assert relative is not None and not relative.startswith("http")
    got = rig.client.download(relative, tmp_path / "vnet.png", project_id=rig.project)
    assert got.path.read_bytes() == rig.emu.image_bytes(image.id)
    (call,) = rig.emu.calls_to("GetArtifact")
    assert call.query == {"path": relative} and call.key_sent
    assert rig.emu.calls_to("Blob") == []


def test_training_client_downloads_exports(make_rig: MakeRig, tmp_path: Path) -> None:
    rig = make_rig()
    first = rig.emu.data.iteration_ids(rig.project)[0]
    rig.emu.data.add_export(rig.project, first, "ONNX", "ONNX12")
    exports = [e for e in rig.client.get_exports(rig.project, first) if e.status == "Done"]
    assert exports
    for n, export in enumerate(exports):
        assert export.download_uri
        got = rig.client.download(export.download_uri, tmp_path / f"{n}.zip")
        with zipfile.ZipFile(got.path) as archive:
            assert "labels.txt" in archive.namelist()
        assert got.sha256 == hashlib.sha256(got.path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "switch",
    [
        {"blob_truncate_rate": 1.0},  # half the bytes, then the connection closes
        {"drop_rate": 1.0},
        {"blob_latency": 0.3},  # longer than the client's timeout
    ],
    ids=["truncated", "dropped", "timeout"],
)
def test_training_client_download_retries_until_complete(
    make_rig: MakeRig, tmp_path: Path, switch: dict[str, float]
) -> None:
    faults = Faults()

    def heal(_: float) -> None:
        for name in switch:
            setattr(faults, name, 0.0)

    rig = make_rig(faults=faults, timeout=0.1, on_sleep=heal)
    image = rig.client.get_images_page(rig.project, take=1)[0]
    assert image.original_image_uri is not None
    for name, value in switch.items():
        setattr(faults, name, value)
    dest = tmp_path / "retried.png"
    got = rig.client.download(image.original_image_uri, dest)
    assert dest.read_bytes() == rig.emu.image_bytes(image.id) and got.size == dest.stat().st_size
    assert len(rig.sleeps) == 1
    rig.wait_calls("Blob", 2)
    assert len(rig.emu.calls_to("Blob")) == 2
    assert _no_partial_files(tmp_path)


def test_training_client_truncated_download_gives_up_as_malformed_and_leaves_no_file(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = make_rig(faults=Faults(blob_truncate_rate=1.0), max_attempts=2)
    image = rig.client.get_images_page(rig.project, take=1)[0]
    assert image.original_image_uri is not None
    dest = tmp_path / "never.png"
    with pytest.raises(MalformedResponse) as caught:
        rig.client.download(image.original_image_uri, dest)
    assert "the download was truncated" in caught.value.user_message
    assert "after 2 attempts" in caught.value.user_message
    assert "sig=" not in caught.value.user_message  # blob links carry SAS signatures
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert len(rig.emu.calls_to("Blob")) == 2


def test_training_client_download_errors_from_storage_are_typed(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    rig = make_rig(seed=None)
    p = rig.emu.data.add_project("blobs")
    rig.emu.data.add_images(p, 2)
    first, second = rig.client.get_images_page(p)
    assert first.original_image_uri and second.original_image_uri
    forged = first.original_image_uri.split("&sig=")[0] + "&sig=forged"
    with pytest.raises(ServiceError) as refused:
        rig.client.download(forged, tmp_path / "forged.png")
    assert (refused.value.status, refused.value.code) == (403, "AuthenticationFailed")
    assert "links expire" in refused.value.user_message
    rig.client.delete_images(p, [second.id])
    with pytest.raises(NotFound) as gone:
        rig.client.download(second.original_image_uri, tmp_path / "gone.png")
    assert (gone.value.status, gone.value.code) == (404, "BlobNotFound")
    assert len(rig.emu.calls_to("Blob")) == 2  # 403 and 404 are final
    assert list(tmp_path.iterdir()) == []


# -- the quota 403 (issue 15) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "message", "seconds"),
    [
        ("7200", "Out of call volume quota.", 7200.0),
        (None, "Out of call volume quota. Quota will be replenished in 2.03:14:07.", 184_447.0),
        (None, "Out of call volume quota. Quota will be replenished in 03:30:56.", 12_656.0),
        (
            None,
            "Out of call volume quota for CustomVision F0. Please retry after 7 days.",
            604_800.0,
        ),
        (None, "Out of call volume quota. Please retry after 2 hours.", 7200.0),
        (None, "Out of call volume quota.", None),
    ],
)
def test_quota_wait_reads_header_then_either_wording(
    header: str | None, message: str, seconds: float | None
) -> None:
    assert quota_wait(header, message) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1 second"),
        (59.2, "1 minute"),
        (61, "2 minutes"),
        (3600, "1 hour"),
        (184_447, "2 days 3 hours 15 minutes"),
        (604_800, "7 days"),
    ],
)
def test_describe_wait_reads_as_people_say_it(seconds: float, text: str) -> None:
    assert describe_wait(seconds) == text


@pytest.mark.parametrize("wording", ["apim", "cognitive"])
def test_training_client_quota_403_fails_at_once_saying_when_it_resets(
    make_rig: MakeRig, wording: str
) -> None:
    rig = make_rig(faults=Faults(quota_exhausted=6 * 86_400 + 1, quota_wording=wording))  # type: ignore[arg-type]
    with pytest.raises(QuotaExhausted) as caught:
        rig.client.get_projects()
    assert caught.value.retry_after == 6 * 86_400 + 1  # the Retry-After header wins
    assert caught.value.status == 403 and not caught.value.maybe_applied
    assert "replenished in 6 days 1 minute" in caught.value.user_message
    assert rig.statuses("GetProjects") == [403] and rig.sleeps == []
