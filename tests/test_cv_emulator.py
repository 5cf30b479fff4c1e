"""The Custom Vision emulator over real HTTP, driven with plain `requests`.

Every service answer in these tests is also checked against the spec (strict) by a hook.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import tracemalloc
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bot.pngbytes import png, png_size
from emulators.customvision import (
    GATEWAY_401_INVALID,
    GATEWAY_401_MISSING,
    Call,
    CustomVisionEmulator,
    Faults,
    Seed,
    busiest_second,
)
from emulators.cvdata import EmulatorData
from tests.spec_schema import SpecChecker

KEY = "test-training-key-3f9a"
SMALL = Seed(projects=3, iterations=2, tags=4, images=60, predictions=12, image_bytes=1500)
ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    emu: CustomVisionEmulator
    http: requests.Session
    clock: FakeClock
    checker: SpecChecker

    @property
    def api(self) -> str:
        return self.emu.api_url

    def get(self, path: str, /, **params: Any) -> requests.Response:
        return self.http.get(self.api + path, params=params)

    def delete(self, path: str, /, **params: Any) -> requests.Response:
        return self.http.delete(self.api + path, params=params)

    def post(self, path: str, body: Any = None, /, **params: Any) -> requests.Response:
        return self.http.post(self.api + path, params=params, json=body)

    def project(self, n: int = 0) -> str:
        return self.emu.data.project_ids()[n]


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig() -> Iterator[MakeRig]:
    """Start emulators (fake clock, spec hook); stop them and check conformance at teardown."""
    rigs: list[Rig] = []

    def make(seed: Seed | None = SMALL, faults: Faults | None = None) -> Rig:
        clock = FakeClock()
        faults = faults or Faults()
        # These tests hold every answer to the spec; the live service's departures from it
        # (Faults.real_quirks) have tests of their own with a lenient checker.
        faults.real_quirks = False
        emu = CustomVisionEmulator(KEY, seed=seed, faults=faults, clock=clock).start()
        checker = SpecChecker(strict=True)
        emu.hooks.append(checker)
        http = requests.Session()
        http.headers["Training-Key"] = KEY
        rig = Rig(emu, http, clock, checker)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.http.close()
        rig.emu.stop()
    for rig in rigs:
        assert rig.emu.hook_errors == []
        rig.checker.assert_clean()


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    return make_rig()


def error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    return response.status_code, body["code"]


def ids(images: list[dict[str, Any]]) -> list[str]:
    return [image["id"] for image in images]


def check_png(data: bytes) -> tuple[int, int]:
    """Parse a PNG fully (chunks, CRCs, IDAT size); return (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (1, 3)
    assert len(zlib.decompress(idat)) == height * (1 + (width + 7) // 8)
    return width, height


# ---------------------------------------------------------------- the gateway


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, GATEWAY_401_MISSING), ({"Training-Key": "wrong"}, GATEWAY_401_INVALID)],
)
def test_emulator_key_missing_or_wrong_answers_401_gateway(
    rig: Rig, headers: dict[str, str], message: str
) -> None:
    with requests.get(rig.api + "/projects", headers=headers) as response:
        assert response.status_code == 401
        assert response.json() == {"error": {"code": "401", "message": message}}
    assert [(c.operation_id, c.status, c.key_sent) for c in rig.emu.calls] == [
        ("GetProjects", 401, bool(headers))
    ]


def test_emulator_invalid_key_message_is_microsofts() -> None:
    assert GATEWAY_401_INVALID == (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource."
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/customvision/v3.3/training/nothing"),
        ("GET", "/customvision/v3.2/training/projects"),
        ("PUT", "/customvision/v3.3/training/projects"),
        ("GET", "/"),
    ],
)
def test_emulator_unknown_route_answers_404_gateway(rig: Rig, method: str, path: str) -> None:
    response = rig.http.request(method, rig.emu.endpoint + path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert rig.emu.calls[-1].operation_id == "Unknown"


# ------------------------------------------------------------------- reading


def test_emulator_project_iteration_tag_image_carry_every_spec_field(rig: Rig) -> None:
    p = rig.project(1)  # object detection
    project = rig.get(f"/projects/{p}").json()
    assert set(project) == {
        "id",
        "name",
        "description",
        "settings",
        "created",
        "lastModified",
        "thumbnailUri",
        "drModeEnabled",
        "status",
    }
    assert project["settings"]["classificationType"] is None
    iterations = rig.get(f"/projects/{p}/iterations").json()
    assert [it["publishName"] for it in iterations] == ["prod-2", ""]
    assert set(iterations[0]) == {
        "id",
        "name",
        "status",
        "created",
        "lastModified",
        "trainedAt",
        "projectId",
        "exportable",
        "exportableTo",
        "domainId",
        "classificationType",
        "trainingType",
        "reservedBudgetInHours",
        "trainingTimeInMinutes",
        "publishName",
        "originalPublishResourceId",
    }
    assert rig.get(f"/projects/{p}/iterations/{iterations[1]['id']}").json() == iterations[1]
    tags = rig.get(f"/projects/{p}/tags").json()
    assert [t["name"] for t in tags] == ["cat", "dog", "bird", "fish"]
    assert rig.get(f"/projects/{p}/tags/{tags[0]['id']}").json() == tags[0]
    images = rig.get(f"/projects/{p}/images/tagged", take=5).json()
    assert set(images[0]) == {
        "id",
        "created",
        "width",
        "height",
        "resizedImageUri",
        "thumbnailUri",
        "originalImageUri",
        "tags",
        "regions",
        "metadata",
    }
    region = images[0]["regions"][0]
    assert set(region) == {
        "regionId",
        "tagName",
        "created",
        "tagId",
        "left",
        "top",
        "width",
        "height",
    }
    assert {t["tagId"] for t in images[0]["tags"]} == {r["tagId"] for r in images[0]["regions"]}
    classification = rig.get(f"/projects/{rig.project(0)}/images/tagged", take=1).json()[0]
    assert classification["regions"] is None
    assert len(classification["tags"]) == 1  # Multiclass


def test_emulator_domains_are_the_spec_examples_plus_detection(rig: Rig) -> None:
    domains = rig.get("/domains").json()
    assert len(domains) == 10
    assert {d["type"] for d in domains} == {"Classification", "ObjectDetection"}


def test_emulator_performance_lists_every_snapshot_tag(rig: Rig) -> None:
    p = rig.project()
    iteration = rig.emu.data.iteration_ids(p)[0]
    body = rig.get(f"/projects/{p}/iterations/{iteration}/performance", threshold=0.9).json()
    assert [t["id"] for t in body["perTagPerformance"]] == rig.emu.data.tag_ids(p, iteration)
    assert rig.get(f"/projects/{p}/iterations/{iteration}/performance", threshold="x").json()[
        "code"
    ] == ("BadRequest")


@pytest.mark.parametrize("order", ["Oldest", "Newest"])
def test_emulator_pages_cover_every_image_once_in_order(rig: Rig, order: str) -> None:
    p = rig.project()
    expected = rig.emu.data.image_ids(p)
    if order == "Newest":
        expected = expected[::-1]
    seen: list[str] = []
    while True:
        page = rig.get(f"/projects/{p}/images", orderBy=order, skip=len(seen), take=7).json()
        seen += ids(page)
        if len(page) < 7:
            break
    assert seen == expected
    assert rig.get(f"/projects/{p}/images/count").json() == len(expected) == 60
    created = [i["created"] for i in rig.get(f"/projects/{p}/images", take=256).json()]
    assert created == sorted(created, reverse=True)  # the spec's default order is Newest


def test_emulator_take_defaults_to_50(rig: Rig) -> None:
    assert len(rig.get(f"/projects/{rig.project()}/images").json()) == 50


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"take": 257}, "BadRequest"),
        ({"take": -1}, "BadRequest"),
        ({"take": "ten"}, "BadRequest"),
        ({"skip": -5}, "BadRequest"),
        ({"orderBy": "Sideways"}, "BadRequest"),
        ({"iterationId": "not-a-guid"}, "BadRequestInvalidIds"),
        ({"tagIds": "1234"}, "BadRequestInvalidIds"),
        ({"tagIds": ",".join(["00000000-0000-4000-8000-000000000000"] * 21)}, None),
    ],
)
def test_emulator_rejects_bad_listing_parameters(
    rig: Rig, params: dict[str, Any], code: str | None
) -> None:
    response = rig.get(f"/projects/{rig.project()}/images/tagged", **params)
    assert error(response) == (400, code or "BadRequestExceededBatchSize")


def test_emulator_accepts_take_256_and_20_tag_ids(rig: Rig) -> None:
    tag = rig.emu.data.tag_ids(rig.project())[0]
    response = rig.get(
        f"/projects/{rig.project()}/images/tagged", take=256, tagIds=",".join([tag] * 20)
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "param", "cap", "code"),
    [
        ("GET", "/images/id", "imageIds", 256, "BadRequestExceededBatchSize"),
        ("DELETE", "/images", "imageIds", 256, "BadRequestExceededBatchSize"),
        ("DELETE", "/predictions", "ids", 64, "BadRequestPredictionIdsExceededCount"),
    ],
)
def test_emulator_enforces_id_caps(
    rig: Rig, method: str, path: str, param: str, cap: int, code: str
) -> None:
    p = rig.project()
    fake = [f"00000000-0000-4000-8000-{n:012x}" for n in range(cap + 1)]
    url = f"{rig.api}/projects/{p}{path}"
    over = rig.http.request(method, url, params={param: ",".join(fake)})
    assert error(over) == (400, code)
    at_cap = rig.http.request(method, url, params={param: ",".join(fake[:cap])})
    assert at_cap.status_code in (200, 204)


@pytest.mark.parametrize(
    "path",
    [
        "/projects/not-a-guid",
        "/projects/{p}/iterations/1234",
        "/projects/{p}/tags/xyz",
        "/projects/{p}/images/id?imageIds=abc",
        "/projects/{p}/images?imageIds=e31a14ab-5d78-4f7b-a267-3a1e4fd8a75",
    ],
)
def test_emulator_malformed_guid_answers_400_invalid_ids(rig: Rig, path: str) -> None:
    url = rig.api + path.format(p=rig.project())
    method = "DELETE" if path.endswith("a75") else "GET"
    assert error(rig.http.request(method, url)) == (400, "BadRequestInvalidIds")


def test_emulator_repeated_query_parameter_is_refused(rig: Rig) -> None:
    p = rig.project()
    image_ids = rig.emu.data.image_ids(p)[:2]
    response = rig.http.get(f"{rig.api}/projects/{p}/images/id", params={"imageIds": image_ids})
    assert error(response) == (400, "BadRequest")


@pytest.mark.parametrize("value", ["yes", "1", "TRUE_"])
def test_emulator_boolean_must_be_true_or_false(rig: Rig, value: str) -> None:
    p = rig.project()
    image = rig.emu.data.image_ids(p)[0]
    response = rig.delete(f"/projects/{p}/images", imageIds=image, allIterations=value)
    assert error(response) == (400, "BadRequest")
    assert rig.emu.data.has_image(p, image)


@pytest.mark.parametrize("iteration", [None, 0, 1])
def test_emulator_counts_match_listings(rig: Rig, iteration: int | None) -> None:
    p = rig.project(2)  # multilabel: some images carry two tags
    data = rig.emu.data
    it = None if iteration is None else data.iteration_ids(p)[iteration]
    extra = {} if it is None else {"iterationId": it}
    tags = data.tag_ids(p, it)

    def listed(path: str, **params: Any) -> list[str]:
        return ids(rig.get(f"/projects/{p}/images{path}", take=256, **extra, **params).json())

    def counted(path: str, **params: Any) -> int:
        value = rig.get(f"/projects/{p}/images{path}/count", **extra, **params).json()
        assert isinstance(value, int)
        return value

    tagged, untagged, everything = listed("/tagged"), listed("/untagged"), listed("")
    assert sorted(tagged + untagged) == sorted(everything) == sorted(data.image_ids(p, it))
    assert counted("/tagged") == len(tagged) and counted("/untagged") == len(untagged)
    assert counted("") == len(everything)
    assert counted("", taggingStatus="Untagged") == len(untagged)
    assert listed("", taggingStatus="Tagged") == tagged
    two = ",".join(tags[:2])
    either = [i for i in everything if set(data.image_tag_ids(p, i, it)) & set(tags[:2])]
    assert sorted(listed("/tagged", tagIds=two)) == sorted(either)
    assert counted("/tagged", tagIds=two) == len(either)
    per_tag = {t["id"]: t["imageCount"] for t in rig.get(f"/projects/{p}/tags", **extra).json()}
    for tag in tags:
        assert per_tag[tag] == counted("/tagged", tagIds=tag)


def test_emulator_images_by_ids_skips_unknown_and_keeps_request_order(rig: Rig) -> None:
    p = rig.project()
    wanted = rig.emu.data.image_ids(p)[:5][::-1]
    other = rig.emu.data.image_ids(rig.project(1))[0]
    unknown = "00000000-0000-4000-8000-000000000001"
    query = ",".join([wanted[0], unknown, *wanted[1:], other, wanted[0].upper()])
    assert ids(rig.get(f"/projects/{p}/images/id", imageIds=query).json()) == wanted


# ------------------------------------------------------------------- deleting


def test_emulator_delete_images_without_all_iterations_leaves_iterations(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    last = data.iteration_ids(p)[-1]
    victims = data.image_ids(p)[:3]
    response = rig.delete(f"/projects/{p}/images", imageIds=",".join(victims))
    assert response.status_code == 204 and response.content == b""
    assert rig.get(f"/projects/{p}/images/id", imageIds=",".join(victims)).json() == []
    in_iteration = rig.get(f"/projects/{p}/images/id", imageIds=",".join(victims), iterationId=last)
    assert ids(in_iteration.json()) == victims
    assert rig.emu.deleted_image_counts() == dict.fromkeys(victims, 1)
    assert all(data.image_exists(p, v) for v in victims)


def test_emulator_delete_images_all_iterations_is_202_and_asynchronous(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(async_delete_delay=5.0))
    p, data = rig.project(), rig.emu.data
    iterations = data.iteration_ids(p)
    victim = data.image_ids(p)[0]
    assert all(data.has_image(p, victim, it) for it in iterations)
    response = rig.delete(f"/projects/{p}/images", imageIds=victim, allIterations="true")
    assert response.status_code == 202 and response.content == b""
    assert not data.has_image(p, victim)
    for it in iterations:  # still visible until the service has done the work
        assert ids(rig.get(f"/projects/{p}/images/id", imageIds=victim, iterationId=it).json()) == [
            victim
        ]
    rig.clock.now += 5.0
    for it in iterations:
        assert rig.get(f"/projects/{p}/images/id", imageIds=victim, iterationId=it).json() == []
    assert not data.image_exists(p, victim)
    assert rig.emu.deleted_image_counts() == {victim: 1}


def test_emulator_async_deletion_becomes_visible_in_real_time() -> None:
    data = EmulatorData(SMALL)
    p = data.project_ids()[0]
    victim = data.image_ids(p)[0]
    data.api_delete_images(
        p, [victim], all_images=False, all_iterations=True, delay=lambda p, i: 0.05
    )
    gone = threading.Event()
    while not gone.wait(0.01):
        if data.pending_deletions() == 0:
            gone.set()
    assert not data.image_exists(p, victim)


def test_emulator_redeleting_is_204_recorded_and_not_counted(rig: Rig) -> None:
    p = rig.project()
    victim = rig.emu.data.image_ids(p)[0]
    unknown = "00000000-0000-4000-8000-0000000000aa"
    for _ in range(2):
        assert rig.delete(f"/projects/{p}/images", imageIds=victim).status_code == 204
    assert rig.delete(f"/projects/{p}/images", imageIds=unknown).status_code == 204
    assert rig.emu.deleted_image_counts() == {victim: 1}
    assert [c.status for c in rig.emu.calls_to("DeleteImages")] == [204, 204, 204]
    # Later, allIterations removes it from the iterations: an actual deletion, counted again.
    response = rig.delete(f"/projects/{p}/images", imageIds=victim, allIterations="true")
    assert response.status_code == 202
    assert rig.emu.deleted_image_counts() == {victim: 2}


def test_emulator_delete_all_images(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(async_delete_delay=0.0))
    p, data = rig.project(), rig.emu.data
    everything = set(data.image_ids(p))
    for it in data.iteration_ids(p):
        everything |= set(data.image_ids(p, it))
    response = rig.delete(f"/projects/{p}/images", allImages="true", allIterations="true")
    assert response.status_code == 202
    assert rig.get(f"/projects/{p}/images/count").json() == 0
    assert all(data.image_ids(p, it) == [] for it in data.iteration_ids(p))
    assert set(rig.emu.deleted_image_counts()) == everything
    assert error(rig.delete(f"/projects/{p}/images")) == (400, "BadRequestRequiredParamIsNull")


def test_emulator_published_iteration_blocks_deletes_until_unpublished(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    published, other = data.iteration_ids(p)
    refused = (400, "BadRequestIterationIsPublished")
    assert error(rig.delete(f"/projects/{p}/iterations/{published}")) == refused
    assert error(rig.delete(f"/projects/{p}")) == refused
    assert rig.delete(f"/projects/{p}/iterations/{other}").status_code == 204
    assert rig.delete(f"/projects/{p}/iterations/{published}/publish").status_code == 204
    again = rig.delete(f"/projects/{p}/iterations/{published}/publish")
    assert error(again) == (400, "BadRequestIterationNotPublished")
    assert rig.get(f"/projects/{p}/iterations/{published}").json()["publishName"] == ""
    assert rig.delete(f"/projects/{p}").status_code == 204
    assert error(rig.get(f"/projects/{p}")) == (404, "NotFoundProject")
    assert p not in [project["id"] for project in rig.get("/projects").json()]


def test_emulator_workspace_is_not_deletable(rig: Rig) -> None:
    p = rig.project()
    workspace = rig.emu.data.workspace_id(p)
    assert error(rig.delete(f"/projects/{p}/iterations/{workspace}")) == (
        400,
        "BadRequestWorkspaceNotDeletable",
    )


def test_emulator_deleting_an_iteration_drops_images_only_it_used(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    first, second = data.iteration_ids(p)
    workspace = set(data.image_ids(p))
    only_first = [i for i in data.image_ids(p, first) if i not in workspace]
    assert only_first  # the seed retires one image in twenty after the first training
    shared = data.image_ids(p, first)[0]
    uri = rig.get(f"/projects/{p}/images/id", imageIds=only_first[0], iterationId=first).json()[0][
        "originalImageUri"
    ]
    with requests.get(uri) as before:
        assert before.status_code == 200
    assert rig.delete(f"/projects/{p}/iterations/{first}/publish").status_code == 204
    assert rig.delete(f"/projects/{p}/iterations/{first}").status_code == 204
    with requests.get(uri) as after:
        assert after.status_code == 404
        assert b"<Code>BlobNotFound</Code>" in after.content
    assert not data.image_exists(p, only_first[0])
    assert data.image_exists(p, shared)
    assert rig.get(f"/projects/{p}/iterations").json()[0]["id"] == second
    assert error(rig.get(f"/projects/{p}/images/id", imageIds=shared, iterationId=first)) == (
        404,
        "NotFoundIteration",
    )


def test_emulator_delete_tag_strips_workspace_only(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    iteration = data.iteration_ids(p)[-1]
    tag = data.tag_ids(p)[0]
    carriers = [i for i in data.image_ids(p) if tag in data.image_tag_ids(p, i)]
    assert carriers
    assert rig.delete(f"/projects/{p}/tags/{tag}").status_code == 204
    assert tag not in [t["id"] for t in rig.get(f"/projects/{p}/tags").json()]
    assert error(rig.get(f"/projects/{p}/tags/{tag}")) == (404, "NotFoundTag")
    assert rig.get(f"/projects/{p}/tags/{tag}", iterationId=iteration).json()["id"] == tag
    now = rig.get(f"/projects/{p}/images/id", imageIds=",".join(carriers)).json()
    assert all(image["tags"] == [] for image in now)  # Multiclass: that was their only tag
    before = rig.get(
        f"/projects/{p}/images/id", imageIds=",".join(carriers), iterationId=iteration
    ).json()
    assert all([t["tagId"] for t in image["tags"]] == [tag] for image in before)
    assert error(rig.delete(f"/projects/{p}/tags/{tag}")) == (404, "NotFoundTag")


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/projects/{x}", "NotFoundProject"),
        ("DELETE", "/projects/{x}", "NotFoundProject"),
        ("GET", "/projects/{x}/images", "NotFoundProject"),
        ("GET", "/projects/{p}/iterations/{x}", "NotFoundIteration"),
        ("DELETE", "/projects/{p}/iterations/{x}", "NotFoundIteration"),
        ("GET", "/projects/{p}/iterations/{x}/export", "NotFoundIteration"),
        ("GET", "/projects/{p}/iterations/{x}/performance", "NotFoundIteration"),
        ("DELETE", "/projects/{p}/iterations/{x}/publish", "NotFoundIteration"),
        ("GET", "/projects/{p}/images?iterationId={x}", "NotFoundIteration"),
        ("GET", "/projects/{p}/tags?iterationId={x}", "NotFoundIteration"),
        ("GET", "/projects/{p}/tags/{x}", "NotFoundTag"),
        ("DELETE", "/projects/{p}/tags/{x}", "NotFoundTag"),
    ],
)
def test_emulator_unknown_ids_answer_not_found_codes(
    rig: Rig, method: str, path: str, code: str
) -> None:
    url = rig.api + path.format(p=rig.project(), x="0f0f0f0f-0000-4000-8000-000000000000")
    assert error(rig.http.request(method, url)) == (404, code)


# ---------------------------------------------------------------- predictions


def test_emulator_query_predictions_follows_the_token(rig: Rig) -> None:
    p = rig.project()
    seen: list[str] = []
    token: dict[str, Any] = {"maxCount": 5, "orderBy": "Oldest"}
    pages = 0
    while True:
        body = rig.post(f"/projects/{p}/predictions/query", token).json()
        pages += 1
        seen += [r["id"] for r in body["results"]]
        token = body["token"]
        if not token["continuation"]:
            break
    assert pages == 3
    assert seen == rig.emu.data.prediction_ids(p)
    newest = rig.post(f"/projects/{p}/predictions/query", {"orderBy": "Newest"}).json()
    assert [r["id"] for r in newest["results"]] == seen[::-1]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"maxCount": 257}, "BadRequestPredictionResultsExceededCount"),
        ({"tags": [{"id": "00000000-0000-4000-8000-000000000000"}] * 3}, None),
        ({"continuation": "%%%"}, "BadRequestPredictionInvalidQueryParameters"),
        ({"orderBy": "Random"}, "BadRequestPredictionInvalidQueryParameters"),
        (None, "BadRequestRequiredParamIsNull"),
    ],
)
def test_emulator_query_predictions_rejects_bad_queries(
    rig: Rig, body: Any, code: str | None
) -> None:
    response = rig.post(f"/projects/{rig.project()}/predictions/query", body)
    assert error(response) == (400, code or "BadRequestPredictionTagsExceededCount")


def test_emulator_query_predictions_filters_by_tag_threshold(rig: Rig) -> None:
    p = rig.project()
    tag = rig.emu.data.tag_ids(p)[0]
    query = {"tags": [{"id": tag, "minThreshold": 0.5, "maxThreshold": 1.0}]}
    body = rig.post(f"/projects/{p}/predictions/query", query).json()
    assert body["results"]
    for result in body["results"]:
        probability = {x["tagId"]: x["probability"] for x in result["predictions"]}[tag]
        assert 0.5 <= probability <= 1.0


def test_emulator_delete_prediction(rig: Rig) -> None:
    p = rig.project()
    victims = rig.emu.data.prediction_ids(p)[:3]
    response = rig.delete(f"/projects/{p}/predictions", ids=",".join(victims))
    assert response.status_code == 204
    left = rig.emu.data.prediction_ids(p)
    assert not set(victims) & set(left) and len(left) == 9
    assert rig.delete(f"/projects/{p}/predictions", ids=victims[0]).status_code == 204
    assert rig.emu.deleted_prediction_counts() == dict.fromkeys(victims, 1)
    assert error(rig.delete(f"/projects/{p}/predictions")) == (
        400,
        "BadRequestPredictionIdsMissing",
    )


# ---------------------------------------------------------------------- blobs


def test_emulator_blobs_are_valid_pngs_matching_the_image(rig: Rig) -> None:
    p = rig.project()
    image = rig.get(f"/projects/{p}/images", take=1).json()[0]
    with requests.get(image["originalImageUri"]) as original:
        assert original.status_code == 200
        assert original.headers["Content-Type"] == "image/png"
        assert check_png(original.content) == (image["width"], image["height"])
        assert original.content == rig.emu.image_bytes(image["id"])
        assert abs(len(original.content) - SMALL.image_bytes) < 200
    for key in ("resizedImageUri", "thumbnailUri"):
        with requests.get(image[key]) as smaller:
            width, height = check_png(smaller.content)
            assert max(width, height) < max(image["width"], image["height"])
    blob_calls = rig.emu.calls_to("Blob")
    assert [(c.status, c.key_sent) for c in blob_calls] == [(200, False)] * 3


def test_emulator_blob_needs_its_signature(rig: Rig) -> None:
    image = rig.get(f"/projects/{rig.project()}/images", take=1).json()[0]
    unsigned = image["originalImageUri"].split("?")[0]
    forged = image["originalImageUri"].replace("sig=", "sig=A")
    for url in (unsigned, forged):
        with requests.get(url) as response:
            assert response.status_code == 403
            assert response.headers["x-ms-error-code"] == "AuthenticationFailed"


def test_emulator_export_blob_is_a_zip_naming_the_snapshot_tags(rig: Rig) -> None:
    p = rig.project()
    iteration = rig.emu.data.iteration_ids(p)[0]
    exports = rig.get(f"/projects/{p}/iterations/{iteration}/export").json()
    assert [(e["platform"], e["status"]) for e in exports] == [("TensorFlow", "Done")]
    with requests.get(exports[0]["downloadUri"]) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        labels = archive.read("labels.txt").decode().split()
    assert labels == [rig.emu.data.tag(p, t).name for t in rig.emu.data.tag_ids(p, iteration)]


def test_emulator_prediction_images_are_served_until_deleted(rig: Rig) -> None:
    p = rig.project()
    result = rig.post(f"/projects/{p}/predictions/query", {"maxCount": 1}).json()["results"][0]
    with requests.get(result["originalImageUri"]) as response:
        check_png(response.content)
    rig.delete(f"/projects/{p}/predictions", ids=result["id"])
    with requests.get(result["originalImageUri"]) as response:
        assert response.status_code == 404


def test_emulator_vnet_uris_are_relative_and_served_by_get_artifact(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(vnet=True))
    p = rig.project()
    image = rig.get(f"/projects/{p}/images", take=1).json()[0]
    path = image["originalImageUri"]
    assert path.startswith("i-") and "://" not in path and "?" not in path
    artifact = rig.get(f"/projects/{p}/artifacts", path=path)
    assert artifact.status_code == 200
    assert artifact.headers["Content-Type"] == "application/octet-stream"
    assert artifact.content == rig.emu.image_bytes(image["id"])
    with requests.get(f"{rig.api}/projects/{p}/artifacts", params={"path": path}) as keyless:
        assert keyless.status_code == 401
    other = rig.project(1)
    assert error(rig.get(f"/projects/{other}/artifacts", path=path)) == (404, "NotFound")
    assert error(rig.get(f"/projects/{p}/artifacts")) == (400, "BadRequestRequiredParamIsNull")
    iteration = rig.emu.data.iteration_ids(p)[0]
    export = rig.get(f"/projects/{p}/iterations/{iteration}/export").json()[0]["downloadUri"]
    assert export.startswith("e-") and export.endswith(".zip")
    assert rig.get(f"/projects/{p}/artifacts", path=export).content[:2] == b"PK"


def test_pngbytes_is_deterministic_and_sized() -> None:
    first = png(640, 480, "key", 5000)
    assert first == png(640, 480, "key", 5000) != png(640, 480, "other", 5000)
    assert len(first) == 5000
    assert png_size(first) == (640, 480) == check_png(first)
    assert check_png(png(1, 1, "tiny")) == (1, 1)
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a" + bytes(30))


@pytest.mark.parametrize(
    ("width", "height", "key", "size", "sha256"),
    [
        (1, 1, "a", 0, "d28e8febb4c54f0a6b0f4fc4913568a315a8212bb12e5b61cf1bbb4238b0ec6c"),
        (9, 17, "b/o", 0, "7cdc747c05e5c049dbf60c09442027b7b4d0379d1f09cbf9b2d691e28ca2c690"),
        (
            960,
            720,
            "abc/o",
            2048,
            "56cd6d40e470b0088779bd0d1e75c42fa379063964a0548d6bf34823b1eaa83f",
        ),
        (
            1601,
            1201,
            "k/i",
            5000,
            "02f3d781cf5730f224b92bf581129c4974897f9f6429b8fee3538983e8e83cd0",
        ),
    ],
)
def test_pngbytes_keeps_the_bytes_of_every_key(
    width: int, height: int, key: str, size: int, sha256: str
) -> None:
    # Digests of the first implementation: a faster one must serve the same bytes, or the
    # images of a project would change between versions of the emulator.
    assert hashlib.sha256(png(width, height, key, size)).hexdigest() == sha256


# --------------------------------------------------------------------- faults


@pytest.mark.parametrize("header", [True, False])
def test_emulator_rate_limit_answers_429(make_rig: MakeRig, header: bool) -> None:
    rig = make_rig(faults=Faults(tps_cap=2, retry_after_header=header))
    p = rig.project()
    statuses = [rig.get(f"/projects/{p}").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    throttled = rig.get("/domains")
    assert throttled.json() == {
        "error": {
            "code": "429",
            "message": "Requests to the GetDomains Operation under Custom_Vision_Training_3.3 "
            "have exceeded rate limit of your current Custom_Vision.Training F0 pricing tier. "
            "Please retry after 1 second. To increase your rate limit switch to a paid tier.",
        }
    }
    assert throttled.headers.get("Retry-After") == ("1" if header else None)
    rig.clock.now += 1.0
    assert rig.get(f"/projects/{p}").status_code == 200
    assert [c.status for c in rig.emu.calls] == [200, 200, 429, 429, 200]


def test_emulator_records_when_the_gateway_counted_each_call(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(tps_cap=1))
    counted = rig.clock.now
    rig.get("/domains")
    rig.clock.now += 0.5
    rig.get("/domains")  # refused: counted when refused, not in the window
    rig.emu.faults.tps_cap = None
    rig.get("/domains")
    assert [(c.status, c.admitted) for c in rig.emu.calls] == [
        (200, counted),
        (429, counted + 0.5),
        (200, None),  # no cap: nothing counts calls
    ]


def test_busiest_second_counts_admitted_calls_in_a_sliding_second() -> None:
    def call(admitted: float | None, status: int = 200) -> Call:
        return Call("GetDomains", "GET", "/", {}, status, 0.0, admitted=admitted)

    assert busiest_second([]) == 0
    calls = [call(0.0), call(0.5), call(0.99), call(1.0), call(1.2, 429), call(None), call(1.7)]
    assert busiest_second(calls) == 3  # 0.0, 0.5, 0.99 or 0.5, 0.99, 1.0; refused not counted


def test_emulator_rate_limit_apim_wording(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(tps_cap=1, throttle_wording="apim"))
    rig.get("/domains")
    body = rig.get("/domains").json()
    assert body == {
        "error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}
    }


def test_emulator_rate_limit_window_slides(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(tps_cap=2))
    rig.get("/domains")
    rig.clock.now += 0.6
    rig.get("/domains")
    rig.clock.now += 0.6  # the first call left the window, the second has not
    assert [rig.get("/domains").status_code for _ in range(2)] == [200, 429]


def test_emulator_error_rate_answers_500_and_503_reproducibly(make_rig: MakeRig) -> None:
    runs = []
    for _ in range(2):
        rig = make_rig(faults=Faults(error_rate=0.5))
        runs.append([rig.get("/domains") for _ in range(30)])
    statuses = [[r.status_code for r in run] for run in runs]
    assert statuses[0] == statuses[1]
    assert {200, 500, 503} == set(statuses[0])
    for response in runs[0]:
        if response.status_code == 500:
            assert response.json() == {"code": "ErrorUnknown", "message": "An error occurred."}
        elif response.status_code == 503:
            assert response.json()["error"]["code"] == "503"


def test_emulator_drop_closes_the_connection_unanswered(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(drop_rate=1.0))
    with pytest.raises(requests.ConnectionError):
        rig.get("/domains")
    rig.emu.faults.drop_rate = 0.0
    assert rig.get("/domains").status_code == 200
    assert [c.status for c in rig.emu.calls] == [0, 200]


def test_emulator_fail_after_breaks_an_operation_mid_batch(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(fail_after={"GetImagesByIds": 2}))
    p = rig.project()
    image = rig.emu.data.image_ids(p)[0]
    statuses = [rig.get(f"/projects/{p}/images/id", imageIds=image).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 500]
    assert rig.get("/domains").status_code == 200
    rig.emu.faults.fail_after.clear()
    assert rig.get(f"/projects/{p}/images/id", imageIds=image).status_code == 200


def test_emulator_truncated_blob_is_detected_by_the_reader(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(blob_truncate_rate=1.0))
    uri = rig.get(f"/projects/{rig.project()}/images", take=1).json()[0]["originalImageUri"]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # noqa: SIM117
        with requests.get(uri, stream=True) as response:
            b"".join(response.iter_content(256))


def test_emulator_latency_still_answers(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(latency=0.01, blob_latency=0.01))
    image = rig.get(f"/projects/{rig.project()}/images", take=1).json()[0]
    with requests.get(image["thumbnailUri"]) as response:
        assert response.status_code == 200


# ------------------------------------------------------ determinism and helpers


def test_emulator_same_seed_same_data_and_bytes(make_rig: MakeRig) -> None:
    one, two = make_rig(), make_rig()
    three = make_rig(seed=Seed(projects=3, images=60, seed=2))

    def snapshot(rig: Rig) -> tuple[Any, ...]:
        p = rig.project()
        images = rig.get(f"/projects/{p}/images", take=256).json()
        text = str(images).replace(rig.emu.endpoint, "")
        return rig.emu.data.project_ids(), text, rig.emu.image_bytes(images[0]["id"])

    assert snapshot(one) == snapshot(two)
    assert snapshot(one)[0] != snapshot(three)[0]


def test_emulator_image_ids_are_distinct_guids_across_projects() -> None:
    data = EmulatorData(Seed(projects=3, images=500))
    all_ids = [i for p in data.project_ids() for i in data.image_ids(p)]
    assert len(set(all_ids)) == len(all_ids) == 1500
    assert len({i[:8] for i in all_ids}) > 1400  # no shared prefix giving the scheme away


def test_emulator_builders_take_hostile_names(rig: Rig) -> None:
    data = rig.emu.data
    name = 'ÿ "quoted" <b>&amp;</b>\n`rm -rf` 🙂 \\ ,;'
    p = data.add_project(name, description="d")
    tag = data.add_tag(p, name + " tag")
    plain = data.add_tag(p, "plain")
    added = data.add_images(p, 3, tag_ids=[tag, plain], metadata={"k": "v,w"})
    untagged = data.add_images(p, 2)
    iteration = data.add_iteration(p, publish_name="live")
    data.add_export(p, iteration, "ONNX", "ONNX12")
    predictions = data.add_predictions(p, 2, iteration_id=iteration)
    assert rig.get(f"/projects/{p}").json()["name"] == name
    assert [t["name"] for t in rig.get(f"/projects/{p}/tags").json()] == [name + " tag", "plain"]
    images = rig.get(f"/projects/{p}/images", orderBy="Oldest").json()
    assert ids(images) == added + untagged
    assert images[0]["metadata"] == {"k": "v,w"}
    assert [t["tagName"] for t in images[0]["tags"]] == [name + " tag", "plain"]
    assert data.image_ids(p, iteration) == added + untagged
    assert rig.get(f"/projects/{p}/iterations/{iteration}").json()["publishName"] == "live"
    assert data.prediction_ids(p) == predictions
    assert error(rig.delete(f"/projects/{p}")) == (400, "BadRequestIterationIsPublished")


def test_emulator_publish_and_export_iteration(rig: Rig) -> None:
    p = rig.project()
    iteration = rig.emu.data.iteration_ids(p)[1]
    published = rig.post(
        f"/projects/{p}/iterations/{iteration}/publish", publishName="canary", predictionId="x"
    )
    assert published.json() is True
    assert rig.emu.data.publish_name(p, iteration) == "canary"
    export = rig.post(f"/projects/{p}/iterations/{iteration}/export", platform="CoreML").json()
    assert (export["status"], export["platform"], export["downloadUri"]) == (
        "Exporting",
        "CoreML",
        "",  # the spec's example; the live service sends null (real_quirks)
    )
    rig.clock.now += 2.0  # Faults.export_seconds
    listed = rig.get(f"/projects/{p}/iterations/{iteration}/export").json()
    export = {e["platform"]: e for e in listed}["CoreML"]
    assert export["status"] == "Done"
    with requests.get(export["downloadUri"]) as response:
        assert response.content[:2] == b"PK"
    assert error(rig.post(f"/projects/{p}/iterations/{iteration}/export")) == (
        400,
        "BadRequestRequiredParamIsNull",
    )


def test_emulator_without_seed_is_empty(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None)
    assert rig.get("/projects").json() == []


def test_emulator_stop_ends_keepalive_connections() -> None:
    emu = CustomVisionEmulator(KEY, seed=Seed(projects=1, images=5)).start()
    with requests.Session() as http:
        assert http.get(emu.api_url + "/domains", headers={"Training-Key": KEY}).ok
        emu.stop()  # returns although the session still holds its keep-alive connection
        with pytest.raises(requests.ConnectionError):
            http.get(emu.api_url + "/domains", headers={"Training-Key": KEY})
    emu.stop()  # idempotent


def test_emulator_repr_hides_the_key() -> None:
    emu = CustomVisionEmulator("super-secret-key")
    assert "super-secret-key" not in repr(emu)


def test_emulator_holds_100k_images_in_modest_memory(make_rig: MakeRig) -> None:
    tracemalloc.start()
    try:
        rig = make_rig(seed=Seed(projects=1, iterations=2, images=100_000, predictions=1))
        p = rig.project()
        page = rig.get(f"/projects/{p}/images", skip=60_000, take=256, orderBy="Oldest").json()
        count = rig.get(f"/projects/{p}/images/count").json()
        last = rig.get(f"/projects/{p}/images", skip=99_990, take=256, orderBy="Oldest").json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page) == 256 and count == 100_000 and len(last) == 10
    assert peak < 60 * 1024 * 1024


def test_emulator_full_size_project_is_the_s0_maximum_in_modest_memory(
    make_rig: MakeRig,
) -> None:
    tracemalloc.start()
    try:
        rig = make_rig(seed=Seed.full_size())
        p = rig.project()
        iterations = [it["id"] for it in rig.get(f"/projects/{p}/iterations").json()]
        sizes = [rig.get(f"/projects/{p}/images/count", iterationId=i).json() for i in iterations]
        workspace = rig.get(f"/projects/{p}/images/count").json()
        page = rig.get(
            f"/projects/{p}/images", iterationId=iterations[3], skip=30_000, take=256
        ).json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert workspace == 100_000 and len(iterations) == 20
    assert sizes[0] == 20_000 and sizes[-1] == 100_000
    assert sizes == sorted(sizes) and len(set(sizes)) == 20
    assert len(page) == 256
    assert peak < 40 * 1024 * 1024
    data = rig.emu.data
    only = data.snapshot_only_ids(p)
    assert 2_000 <= len(only) <= 10_000  # "a few thousand images only snapshots still hold"
    # Each was removed just after the one training that kept it.
    holders = {
        image: [i for i in iterations if data.has_image(p, image, i)] for image in only[::50]
    }
    assert all(len(held) == 1 for held in holders.values())
    assert not any(data.has_image(p, image) for image in holders)
    # The last iteration trained on today's workspace.
    assert data.image_ids(p, iterations[-1]) == data.image_ids(p)


def test_emulator_scaled_full_size_project_keeps_its_shape() -> None:
    data = EmulatorData(Seed.full_size(0.05))
    p = data.project_ids()[0]
    sizes = [len(data.image_ids(p, i)) for i in data.iteration_ids(p)]
    assert len(data.image_ids(p)) == 5_000 and len(sizes) == 20
    assert sizes[0] == 1_000 and sizes[-1] == 5_000 and sizes == sorted(sizes)
    assert 100 <= len(data.snapshot_only_ids(p)) <= 500


def test_emulator_cli_serves_until_interrupted() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "emulators.customvision", "--port", "0", "--key", KEY]
    command += ["--projects", "1", "--images", "10", "--tps-cap", "50"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Custom Vision Training API emulator: http://127.0.0.1:")
        endpoint = first.rsplit(" ", 1)[1].strip()
        with requests.get(
            endpoint + "/customvision/v3.3/training/projects", headers={"Training-Key": KEY}
        ) as response:
            assert len(response.json()) == 1
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=10) == 0
    assert KEY not in first + rest


# --- faults: a change applied but never answered; GUIDs in upper case ------------------------


@pytest.mark.parametrize(
    ("mode", "status"), [("drop", 0), ("500", 500), ("503", 503), ("504", 504)]
)
def test_fail_after_apply_applies_the_change_then_fails_the_answer(
    make_rig: MakeRig, mode: Literal["drop", "500", "503", "504"], status: int
) -> None:
    rig = make_rig(faults=Faults(fail_after_apply={"DeleteImages": mode}))
    p = rig.project()
    image = rig.emu.data.image_ids(p)[0]
    try:
        answer = rig.delete(f"/projects/{p}/images", imageIds=image, allIterations="true")
        assert answer.status_code == status
    except requests.ConnectionError:
        assert mode == "drop"
    assert not rig.emu.data.has_image(p, image)  # applied all the same
    assert rig.emu.calls_to("DeleteImages")[-1].status == status
    assert rig.emu.deleted_image_counts() == {image: 1}


def test_upper_case_ids_answers_every_guid_in_upper_case_and_accepts_any_case(
    rig: Rig,
) -> None:
    p = rig.project()
    image = rig.emu.data.image_ids(p)[0]
    rig.emu.faults.upper_case_ids = True
    listed = rig.get(f"/projects/{p.upper()}/images/id", imageIds=image.upper()).json()
    assert listed[0]["id"] == image.upper()
    assert rig.get(f"/projects/{p}").json()["id"] == p.upper()
    assert [i["id"] for i in rig.get(f"/projects/{p}/iterations").json()] == [
        i.upper() for i in rig.emu.data.iteration_ids(p)
    ]


# ------------------------------------------------ Azure's timing and states (issue 15)


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_links_carry_a_signed_expiry_a_day_after_the_listing(rig: Rig) -> None:
    image = rig.get(f"/projects/{rig.project()}/images", take=1).json()[0]
    sas = _query(image["originalImageUri"])
    assert list(sas) == ["sv", "sr", "sig", "se", "sp"]  # the recorded order
    expiry = datetime.strptime(sas["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expiry - rig.emu.data.now() == timedelta(days=1)
    later = image["originalImageUri"].replace(sas["se"][:4], str(int(sas["se"][:4]) + 1), 1)
    with requests.get(later) as response:  # a longer se is not signed
        assert response.status_code == 403
        assert b"Signature did not match" in response.content


def test_expired_link_answers_storage_403_and_a_fresh_listing_works(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(link_lifetime=60.0))
    p = rig.project()
    image = rig.get(f"/projects/{p}/images", take=1).json()[0]
    export = rig.get(f"/projects/{p}/iterations/{rig.emu.data.iteration_ids(p)[0]}/export")
    links = [image["originalImageUri"], image["thumbnailUri"], export.json()[0]["downloadUri"]]
    rig.clock.now += 60.0
    for url in links:  # valid up to and including the second of se
        with requests.get(url) as response:
            assert response.status_code == 200
    rig.clock.now += 1.0
    for url in links:
        with requests.get(url) as response:
            assert response.status_code == 403
            assert response.headers["x-ms-error-code"] == "AuthenticationFailed"
            assert response.headers["Content-Type"] == "application/xml"
            body = response.content.decode()
            assert "<Code>AuthenticationFailed</Code>" in body
            assert "Signature not valid in the specified time frame" in body
    fresh = rig.get(f"/projects/{p}/images/id", imageIds=image["id"]).json()[0]
    with requests.get(fresh["originalImageUri"]) as response:
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("faults", "workspace", "snapshots"),
    [
        (Faults(), 0.0, 0.2),  # the defaults: the workspace at once, the snapshots shortly after
        (Faults(async_delete_workspace_delay=30.0, async_delete_delay=90.0), 30.0, 90.0),
    ],
)
def test_async_deletion_lags_are_configurable(
    make_rig: MakeRig, faults: Faults, workspace: float, snapshots: float
) -> None:
    rig = make_rig(faults=faults)
    p, data = rig.project(), rig.emu.data
    victim = data.image_ids(p)[0]
    iterations = data.iteration_ids(p)
    assert (
        rig.delete(f"/projects/{p}/images", imageIds=victim, allIterations="true").status_code
        == 202
    )
    start = rig.clock.now

    def present() -> list[bool]:
        return [data.has_image(p, victim)] + [data.has_image(p, victim, i) for i in iterations]

    rig.clock.now = start + workspace - 0.01
    assert present()[1:] == [True, True]
    rig.clock.now = start + workspace
    assert present()[0] is False
    rig.clock.now = start + snapshots - 0.01
    assert present()[1:] == [True, True]
    rig.clock.now = start + snapshots
    assert present() == [False, False, False]


def test_async_deletion_lag_per_project_and_per_snapshot(make_rig: MakeRig) -> None:
    rig = make_rig()
    data = rig.emu.data
    p, q = rig.project(0), rig.project(1)
    first, second = data.iteration_ids(p)
    rig.emu.faults.async_delete_delays = {
        f"{p}/workspace": 10.0,
        p: 100.0,
        second: 1000.0,
    }
    victim, bystander = data.image_ids(p)[0], data.image_ids(q)[0]
    for project, image in ((p, victim), (q, bystander)):
        rig.delete(f"/projects/{project}/images", imageIds=image, allIterations="true")
    start = rig.clock.now
    assert not data.has_image(q, bystander)  # other projects keep the defaults
    for at, workspace, in_first, in_second in (
        (9.9, True, True, True),
        (10.0, False, True, True),
        (100.0, False, False, True),
        (1000.0, False, False, False),
    ):
        rig.clock.now = start + at
        assert [
            data.has_image(p, victim),
            data.has_image(p, victim, first),
            data.has_image(p, victim, second),
        ] == [workspace, in_first, in_second], at
    # While the workspace part is pending, a second delete counts nothing new.
    assert rig.emu.deleted_image_counts()[victim] == 1


def test_export_is_queued_with_a_null_link_and_a_repeat_is_refused(make_rig: MakeRig) -> None:
    rig = make_rig(faults=Faults(export_seconds=30.0))
    rig.emu.hooks.remove(rig.checker)  # recorded: downloadUri null, which the spec does not allow
    rig.emu.faults.real_quirks = True
    p, data = rig.project(), rig.emu.data
    iteration = data.iteration_ids(p)[1]
    path = f"/projects/{p}/iterations/{iteration}/export"
    queued = rig.post(path, platform="ONNX")
    assert queued.status_code == 200
    assert queued.json() == {
        "platform": "ONNX",
        "status": "Exporting",
        "downloadUri": None,
        "flavor": None,
        "newerVersionAvailable": False,
    }
    repeat = rig.post(path, platform="ONNX")
    assert error(repeat) == (400, "BadRequestExportAlreadyInProgress")
    assert repeat.json()["message"] == f"{iteration} is already queued for export"
    assert rig.post(path, platform="CoreML").status_code == 200  # another platform queues too
    listed = {e["platform"]: e for e in rig.get(path).json()}
    assert (listed["ONNX"]["status"], listed["ONNX"]["downloadUri"]) == ("Exporting", None)
    rig.clock.now += 30.0
    done = {e["platform"]: e for e in rig.get(path).json()}["ONNX"]
    assert done["status"] == "Done"
    with requests.get(done["downloadUri"]) as response:
        assert response.content[:2] == b"PK"
    again = rig.post(path, platform="ONNX")  # once done, it may be exported again
    assert again.json()["status"] == "Exporting"
    rig.emu.faults.export_repeat = "always"
    rig.clock.now += 30.0
    assert error(rig.post(path, platform="ONNX")) == (400, "BadRequestExportAlreadyInProgress")


@pytest.mark.parametrize("status", ["New", "Training", "Failed"])
def test_iterations_not_completed_carry_the_recorded_nulls(rig: Rig, status: str) -> None:
    p, data = rig.project(), rig.emu.data
    rig.emu.hooks.remove(rig.checker)  # the recorded shape breaks the spec (exportableTo null)
    iteration = data.add_iteration(p, status=status)
    answer = rig.get(f"/projects/{p}/iterations/{iteration}").json()
    assert "trainedAt" not in answer
    assert {k: answer[k] for k in ("status", "exportable", "trainingTimeInMinutes")} == {
        "status": status,
        "exportable": False,
        "trainingTimeInMinutes": 0,
    }
    for key in (
        "exportableTo",
        "domainId",
        "classificationType",
        "publishName",
        "originalPublishResourceId",
    ):
        assert answer[key] is None, key
    assert answer in rig.get(f"/projects/{p}/iterations").json()
    export = rig.post(f"/projects/{p}/iterations/{iteration}/export", platform="ONNX")
    assert error(export) == (400, "BadRequestIterationIsNotTrained")


def test_training_iteration_completes_and_refuses_changes_meanwhile(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    rig.emu.hooks.remove(rig.checker)
    iteration = data.add_iteration(p, status="Training", train_seconds=120.0)
    refused = (400, "BadRequestTrainingAlreadyInProgress")
    assert error(rig.delete(f"/projects/{p}/iterations/{iteration}")) == refused
    assert error(rig.delete(f"/projects/{p}/iterations/{iteration}/publish")) == refused
    rig.clock.now += 120.0
    answer = rig.get(f"/projects/{p}/iterations/{iteration}").json()
    assert answer["status"] == "Completed" and answer["trainedAt"]
    rig.emu.faults.training_iteration_changes = "allowed"
    other = data.add_iteration(p, status="Training")
    assert rig.delete(f"/projects/{p}/iterations/{other}").status_code == 204


def test_real_quirks_zone_less_timestamps_nulls_and_absent_fields(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.emu.hooks.remove(rig.checker)
    rig.emu.faults.real_quirks = True
    data = rig.emu.data
    p = rig.project(0)  # classification
    image = rig.get(f"/projects/{p}/images/tagged", take=1).json()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}", image["created"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}", image["tags"][0]["created"])
    assert "regions" not in image and "metadata" not in image
    detection = rig.get(f"/projects/{rig.project(1)}/images/tagged", take=1).json()[0]
    assert detection["regions"] and "Z" not in detection["regions"][0]["created"]
    unpublished = rig.get(f"/projects/{p}/iterations/{data.iteration_ids(p)[1]}").json()
    assert (unpublished["publishName"], unpublished["originalPublishResourceId"]) == (None, None)
    empty = data.add_project("Empty")
    assert rig.get(f"/projects/{empty}").json()["thumbnailUri"] is None
    rig.emu.faults.real_quirks = False
    image = rig.get(f"/projects/{p}/images/tagged", take=1).json()[0]
    assert image["created"].endswith("Z") and image["metadata"] == {} and "regions" in image


@pytest.mark.parametrize(
    ("wording", "seconds", "message", "body_shape"),
    [
        (
            "apim",
            2 * 86_400 + 3 * 3600 + 14 * 60 + 7,
            "Out of call volume quota. Quota will be replenished in 2.03:14:07.",
            "statusCode",
        ),
        (
            "apim",
            3 * 3600 + 5,
            "Out of call volume quota. Quota will be replenished in 03:00:05.",
            "statusCode",
        ),
        (
            "cognitive",
            6 * 86_400 + 1,
            "Out of call volume quota for CustomVision.Training F0 pricing tier. Please retry "
            "after 7 days. To increase your call volume switch to a paid tier.",
            "error",
        ),
    ],
)
def test_quota_403_answers_every_call_with_retry_after(
    make_rig: MakeRig, wording: str, seconds: float, message: str, body_shape: str
) -> None:
    rig = make_rig(faults=Faults(quota_exhausted=seconds, quota_wording=wording))  # type: ignore[arg-type]
    for path in ("/projects", f"/projects/{rig.project()}/images"):
        response = rig.get(path)
        assert response.status_code == 403
        assert response.headers["Retry-After"] == str(int(seconds))
        body = response.json()
        if body_shape == "statusCode":
            assert body == {"statusCode": 403, "message": message}
        else:
            assert body == {"error": {"code": "403", "message": message}}
    rig.emu.faults.quota_exhausted = None
    assert rig.get("/projects").status_code == 200


def test_update_image_metadata_merges_and_reports_per_image(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    first, second = data.image_ids(p)[:2]
    unknown = "00000000-0000-4000-8000-0000000000ab"
    response = rig.post(f"/projects/{p}/images/metadata", {"person": "4711"}, imageIds=first)
    assert response.status_code == 200
    assert response.json() == {
        "isBatchSuccessful": True,
        "images": [{"imageId": first, "status": "OK", "metadata": {"person": "4711"}}],
    }
    response = rig.post(
        f"/projects/{p}/images/metadata", {"site": "B"}, imageIds=f"{first},{unknown}"
    )
    assert response.status_code == 207
    assert response.json()["images"] == [
        {"imageId": first, "status": "OK", "metadata": {"person": "4711", "site": "B"}},
        {"imageId": unknown, "status": "ErrorImageNotFound", "metadata": None},
    ]
    snapshot = data.iteration_ids(p)[0]
    listed = rig.get(f"/projects/{p}/images/id", imageIds=first, iterationId=snapshot).json()
    assert listed[0]["metadata"] == {"person": "4711", "site": "B"}
    assert rig.get(f"/projects/{p}/images/id", imageIds=second).json()[0]["metadata"] == {}


@pytest.mark.parametrize(
    ("limits", "pairs", "key", "value"), [("docs", 10, 128, 256), ("spec", 50, 256, 512)]
)
def test_metadata_limits_follow_the_chosen_source(
    make_rig: MakeRig, limits: str, pairs: int, key: int, value: int
) -> None:
    rig = make_rig(faults=Faults(metadata_limits=limits))  # type: ignore[arg-type]
    p = rig.project()
    image = rig.emu.data.image_ids(p)[0]
    path = f"/projects/{p}/images/metadata"
    full = {f"k{n}": "v" for n in range(pairs)}
    assert rig.post(path, full, imageIds=image).status_code == 200
    over = rig.post(path, {"one-more": "v"}, imageIds=image)
    assert over.status_code == 207
    assert over.json()["images"][0]["status"] == "ErrorLimitExceed"
    assert rig.post(path, {"k" * key: "v" * value}, imageIds=rig.emu.data.image_ids(p)[1]).ok
    assert error(rig.post(path, {"k" * (key + 1): "v"}, imageIds=image)) == (
        400,
        "BadRequestImageMetadataKey",
    )
    assert error(rig.post(path, {"k": "v" * (value + 1)}, imageIds=image)) == (
        400,
        "BadRequestImageMetadataValue",
    )
    ids_65 = ",".join(f"00000000-0000-4000-8000-{n:012d}" for n in range(65))
    assert error(rig.post(path, {"k": "v"}, imageIds=ids_65)) == (
        400,
        "BadRequestExceededBatchSize",
    )


def test_upload_sets_metadata_and_tags(rig: Rig) -> None:
    p, data = rig.project(), rig.emu.data
    tag = data.tag_ids(p)[0]
    contents = base64.b64encode(png(40, 30, "upload", 300)).decode()
    batch = {
        "images": [
            {"name": "a.png", "contents": contents},
            {"name": "b.png", "contents": contents},
        ],
        "tagIds": [tag],
        "metadata": {"person": "4711"},
    }
    response = rig.post(f"/projects/{p}/images/files", batch)
    assert response.status_code == 200
    summary = response.json()
    assert summary["isBatchSuccessful"] is True
    assert [r["status"] for r in summary["images"]] == ["OK", "OK"]
    made = [r["image"]["id"] for r in summary["images"]]
    assert all(r["image"]["metadata"] == {"person": "4711"} for r in summary["images"])
    assert data.image_tag_ids(p, made[0]) == [tag]
    found = rig.get(f"/projects/{p}/images", **{"$filter": "person eq '4711'"}).json()
    assert sorted(ids(found)) == sorted(made)
    too_many = {**batch, "metadata": {f"k{n}": "v" for n in range(11)}}
    assert error(rig.post(f"/projects/{p}/images/files", too_many)) == (400, "BadRequestImageBatch")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("person eq '4711'", {"a", "b"}),
        ("person ne '4711'", {"c", "none"}),
        ("person eq '4711' and site eq 'B'", {"b"}),
        ("site eq 'B' or person eq 'O''Brien'", {"b", "c"}),
        ("(person eq '4711' or person eq 'O''Brien') and site ne 'B'", {"a", "c"}),
        ("person eq 'nobody'", set()),
    ],
)
def test_filter_selects_by_metadata_in_listings_and_counts(
    rig: Rig, expression: str, expected: set[str]
) -> None:
    p, data = rig.project(2), rig.emu.data
    names: dict[str, str] = {}
    for name, metadata in (
        ("a", {"person": "4711", "site": "A"}),
        ("b", {"person": "4711", "site": "B"}),
        ("c", {"person": "O'Brien"}),
        ("none", {"other": "x"}),
    ):
        (image,) = data.add_images(p, 1, metadata=metadata)
        names[image] = name
    everything = {**{i: "seeded" for i in data.image_ids(p)}, **names}
    found = rig.get(f"/projects/{p}/images", take=256, **{"$filter": expression}).json()
    got = {everything[i] for i in ids(found)}
    if expression.startswith("person ne"):
        expected = expected | {"seeded"}  # images without the key match ne
    assert got == expected
    count = rig.get(f"/projects/{p}/images/count", **{"$filter": expression}).json()
    assert count == len(found)


@pytest.mark.parametrize(
    "expression",
    [
        "person eq 4711",
        "person eq '4711",
        "person gt '1'",
        "person eq '1' and",
        "(person eq '1'",
        "person eq '1')",
        "eq '1'",
        "person eq '1' xor site eq '2'",
    ],
)
def test_malformed_filter_is_refused(rig: Rig, expression: str) -> None:
    p = rig.project()
    for suffix in ("/images", "/images/count"):
        response = rig.get(f"/projects/{p}{suffix}", **{"$filter": expression})
        assert error(response) == (400, "BadRequestInvalid")
        assert response.json()["message"].startswith("Invalid $filter: ")


def test_image_performances_and_their_count(rig: Rig) -> None:
    p, data = rig.project(1), rig.emu.data
    iteration = data.iteration_ids(p)[0]
    path = f"/projects/{p}/iterations/{iteration}/performance/images"
    count = rig.get(path + "/count").json()
    assert count == rig.get(f"/projects/{p}/images/tagged/count", iterationId=iteration).json()
    pages = [rig.get(path, take=20, skip=s, orderBy="Oldest").json() for s in range(0, count, 20)]
    listed = [image for page in pages for image in page]
    assert len({i["id"] for i in listed}) == count
    first = listed[0]
    assert set(first) >= {"id", "created", "width", "height", "imageUri", "thumbnailUri"}
    assert {pr["tagId"] for pr in first["predictions"]} == set(data.tag_ids(p, iteration))
    tag = data.tag_ids(p, iteration)[0]
    assert rig.get(path + "/count", tagIds=tag).json() == len(
        rig.get(path, tagIds=tag, take=256).json()
    )


@pytest.mark.parametrize("base", ["/customvision/v3.3/Training", "/CustomVision/V3.3/training"])
def test_service_path_matches_case_insensitively(rig: Rig, base: str) -> None:
    p = rig.project()
    response = rig.http.get(f"{rig.emu.endpoint}{base}/Projects/{p}/images/count")
    assert response.status_code == 200 and response.json() == len(rig.emu.data.image_ids(p))


@pytest.mark.parametrize(
    ("variant", "answer"),
    [
        ("BadRequestIterationNotPublished", (400, "BadRequestIterationNotPublished")),
        ("BadRequest", (400, "BadRequest")),
        ("204", (204, None)),
    ],
)
def test_unpublishing_an_unpublished_iteration_plays_each_variant(
    rig: Rig, variant: str, answer: tuple[int, str | None]
) -> None:
    p = rig.project()
    rig.emu.faults.unpublish_unpublished = variant  # type: ignore[assignment]
    unpublished = rig.emu.data.iteration_ids(p)[1]
    response = rig.delete(f"/projects/{p}/iterations/{unpublished}/publish")
    got = (response.status_code, response.json()["code"] if response.content else None)
    assert got == answer


@pytest.mark.parametrize(
    ("variant", "answer"),
    [
        ("BadRequestIterationIsPublished", (400, "BadRequestIterationIsPublished")),
        ("BadRequest", (400, "BadRequest")),
        ("ConflictInvalid", (409, "ConflictInvalid")),
    ],
)
def test_deleting_a_published_iteration_plays_each_variant(
    rig: Rig, variant: str, answer: tuple[int, str]
) -> None:
    p = rig.project()
    rig.emu.faults.delete_published = variant  # type: ignore[assignment]
    published = rig.emu.data.iteration_ids(p)[0]
    assert error(rig.delete(f"/projects/{p}/iterations/{published}")) == answer
    assert error(rig.delete(f"/projects/{p}")) == answer


def test_create_project_tag_and_train_as_the_spec_and_docs_say(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None, faults=Faults(train_seconds=0.0))
    detection = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"  # General (ObjectDetection)
    made = rig.post("/projects", None, name="scratch", domainId=detection)
    assert made.status_code == 200
    p = made.json()["id"]
    assert made.json()["settings"]["domainId"] == detection
    refusals = [
        (rig.post("/projects", None, name="scratch"), "BadRequestProjectNameNotUnique"),
        (rig.post("/projects", None, name=" "), "BadRequestProjectName"),
        (
            rig.post("/projects", None, name="x", domainId=str(uuid.UUID(int=7))),
            "BadRequestProjectUnknownDomain",
        ),
        (rig.post("/projects", None), "BadRequestRequiredParamIsNull"),
    ]
    tag = rig.post(f"/projects/{p}/tags", None, name="a")
    assert (tag.status_code, tag.json()["name"], tag.json()["imageCount"]) == (200, "a", 0)
    refusals.append((rig.post(f"/projects/{p}/tags", None, name="a"), "BadRequestTagNameNotUnique"))
    # Object detection needs 15 images per tag (Microsoft's docs).
    rig.emu.data.add_images(p, 14, tag_ids=[tag.json()["id"]])
    refusals.append((rig.post(f"/projects/{p}/train"), "BadRequestTrainingValidationFailed"))
    assert [(r.status_code, r.json()["code"]) for r, _ in refusals] == [
        (400, code) for _, code in refusals
    ]
    rig.emu.data.add_images(p, 1, tag_ids=[tag.json()["id"]])
    trained = rig.post(f"/projects/{p}/train")
    assert trained.status_code == 200
    assert rig.get(f"/projects/{p}/iterations/{trained.json()['id']}").json()["status"] == (
        "Completed"
    )
    assert len(rig.emu.data.image_ids(p, trained.json()["id"])) == 15


def test_train_refuses_while_an_iteration_trains(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None, faults=Faults(train_seconds=3600.0))
    p = rig.emu.data.add_project("classes")
    for name in ("a", "b"):
        rig.emu.data.add_images(p, 5, tag_ids=[rig.emu.data.add_tag(p, name)])
    first = rig.post(f"/projects/{p}/train")
    assert first.json()["status"] == "Training"
    again = rig.post(f"/projects/{p}/train")
    assert (again.status_code, again.json()["code"]) == (400, "BadRequestTrainingAlreadyInProgress")
    rig.checker.problems.clear()  # a training iteration carries recorded nulls off the spec


def test_create_images_with_regions_tags_them_and_refuses_bad_boxes(make_rig: MakeRig) -> None:
    rig = make_rig(seed=None)
    data = rig.emu.data
    detection = data.add_project("boxes", object_detection=True)
    classes = data.add_project("classes")
    tag, other = data.add_tag(detection, "a"), data.add_tag(classes, "b")
    content = base64.b64encode(png(8, 8, "x")).decode("ascii")

    def upload(p: str, region: dict[str, Any]) -> requests.Response:
        entry = {"name": "x.png", "contents": content, "regions": [region]}
        return rig.post(f"/projects/{p}/images/files", {"images": [entry]})

    box = {"left": 0.1, "top": 0.1, "width": 0.5, "height": 0.5}
    made = upload(detection, {"tagId": tag, **box})
    assert made.status_code == 200
    image = made.json()["images"][0]["image"]
    assert [t["tagId"] for t in image["tags"]] == [tag]
    assert [r["tagId"] for r in image["regions"]] == [tag]
    refused = [
        upload(classes, {"tagId": other, **box}),
        upload(detection, {"tagId": tag, **box, "width": 0.95}),
        upload(detection, {"tagId": tag, **box, "left": -0.1}),
        upload(detection, {**box}),
    ]
    assert [(r.status_code, r.json()["code"]) for r in refused] == [
        (400, "BadRequestImageRegions")
    ] * 4
