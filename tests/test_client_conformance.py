"""Every request the Training API client sends conforms to the v3.3 spec.

A response hook on the client's own requests.Session records each request as it went on the
wire (method, URL, headers, body). `check_request` matches it to an operation of
training-v3.3.json (tests/spec_schema.py) and checks every query parameter is declared there
with a valid value (GUIDs, csv arrays within maxItems, lowercase booleans, integers within
bounds, enums), sent once, that required parameters are present, the JSON body matches its
schema, and the headers: Training-Key and Accept on Training API calls, NO key on blob links.
Requests that never got an answer (dropped, timed out) are checked from the emulator's own
call record (`check_calls`).

test_training_client.py runs these checks on every request of its tests too; the test here
drives every public method of the client once and checks every operation was reached.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bot.pngbytes import png
from bot.training import TrainingClient
from emulators.customvision import Call, CustomVisionEmulator, Exchange, Faults, Seed
from tests.spec_schema import BASE_PATH, operation_for, validate_response

BASE = BASE_PATH  # /customvision/v3.3/training
JSON_ACCEPT = "application/json"
ARTIFACT_ACCEPT = "application/octet-stream, application/json"


@dataclass(frozen=True)
class Sent:
    """One request as the client sent it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query, keep_blank_values=True)

    @property
    def is_training_api(self) -> bool:
        return self.path.startswith(BASE + "/")


def recording_session() -> tuple[requests.Session, list[Sent]]:
    """Return a real Session that records every request it sends, and the record."""
    sent: list[Sent] = []
    session = requests.Session()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        body = request.body
        if isinstance(body, str):
            body = body.encode()
        sent.append(
            Sent(
                method=str(request.method),
                url=str(request.url),
                headers=dict(request.headers),
                body=body if isinstance(body, bytes) else None,
            )
        )

    session.hooks["response"].append(record)
    return session, sent


# -- the checker -------------------------------------------------------------------------------


def check_request(sent: Sent, key: str) -> list[str]:
    """Return what is wrong with one request against the spec (empty when it conforms)."""
    if not sent.is_training_api:
        # A blob link: must never carry the key.
        return ["Training-Key sent to a blob link"] if "Training-Key" in sent.headers else []
    try:
        operation = operation_for(sent.method, sent.path)
    except LookupError:
        return [f"{sent.method} {sent.path} is no operation of the spec"]
    problems: list[str] = []
    query = sent.query
    for name, values in query.items():
        if len(values) != 1:
            problems.append(f"{name}: sent {len(values)} times (csv arrays are one value)")
    body: Any = None
    if sent.body:
        if sent.headers.get("Content-Type") != "application/json":
            problems.append(f"Content-Type {sent.headers.get('Content-Type')!r} for a JSON body")
        body = json.loads(sent.body)
    single = {name: values[0] for name, values in query.items()}
    problems += operation.request_problems(single, body)
    if sent.headers.get("Training-Key") != key:
        problems.append("Training-Key header missing or wrong")
    accept = ARTIFACT_ACCEPT if operation.operation_id == "GetArtifact" else JSON_ACCEPT
    if sent.headers.get("Accept") != accept:
        problems.append(f"Accept is {sent.headers.get('Accept')!r}, expected {accept!r}")
    return [f"{operation.operation_id}: {p}" for p in problems]


def check_all(sent: list[Sent], key: str) -> list[str]:
    """Return every problem of every request in `sent`."""
    return [problem for request in sent for problem in check_request(request, key)]


def check_calls(calls: list[Call]) -> list[str]:
    """Return what is wrong with the emulator's record of the calls (answered or not)."""
    problems = []
    for call in calls:
        if call.operation_id == "Blob":
            if call.key_sent:
                problems.append(f"Blob: Training-Key sent to a blob link ({call.path})")
            continue
        try:
            operation = operation_for(call.method, call.path)
        except LookupError:
            problems.append(f"{call.method} {call.path} is no operation of the spec")
            continue
        # The record keeps no body: bodies are checked from what the client sent (check_all).
        body: dict[str, Any] | None = {} if call.method == "POST" else None
        found = operation.request_problems(call.query, body)
        problems += [f"{operation.operation_id}: {p}" for p in found]
        if not call.key_sent:
            problems.append(f"{operation.operation_id}: sent without the Training-Key")
    return problems


# -- the checker checks ------------------------------------------------------------------------

P = "bc3f7dad-5544-468c-8573-3ef04d55463e"
IT = "e31a14ab-5d78-4f7b-a267-3a1e4fd8a758"
KEY = "conformance-key-0042"


def _sent(method: str, url: str, *, body: Any = None, **headers: str) -> Sent:
    full_headers = {"Training-Key": KEY, "Accept": JSON_ACCEPT, **headers}
    raw = None
    if body is not None:
        raw = json.dumps(body).encode()
        full_headers["Content-Type"] = "application/json"
    return Sent(method, f"http://127.0.0.1:1{BASE}{url}", full_headers, raw)


@pytest.mark.parametrize(
    ("sent", "problems"),
    [
        (_sent("GET", f"/projects/{P}/images?orderBy=Oldest&take=256&skip=0"), []),
        (
            _sent("GET", f"/projects/{P}/images?take=257&orderBy=Newest&skip=0"),
            ["GetImages: take: 257 is above the maximum 256"],
        ),
        (
            _sent("GET", f"/projects/{P}/images/tagged?tagIds={IT}&tagIds={IT}"),
            ["GetTaggedImages: tagIds: sent 2 times (csv arrays are one value)"],
        ),
        (
            _sent("DELETE", f"/projects/{P}/images?imageIds={IT},x&allIterations=True"),
            [
                "DeleteImages: imageIds: 'x' is not a GUID",
                "DeleteImages: allIterations: 'True' is not true/false",
            ],
        ),
        (
            _sent("DELETE", f"/projects/{P}/images?imageIds=" + ",".join([IT] * 257)),
            ["DeleteImages: imageIds: 257 items, at most 256"],
        ),
        (
            _sent("DELETE", f"/projects/{P}/predictions"),
            ["DeletePrediction: ids: required query parameter missing"],
        ),
        (
            _sent("GET", f"/projects/{P}/tags?iterationid={IT}"),
            ["GetTags: unknown query parameter 'iterationid'"],
        ),
        (
            _sent("GET", "/projects/not-a-guid"),
            ["GetProject: projectId: 'not-a-guid' is not a GUID"],
        ),
        (_sent("GET", "/account"), [f"GET {BASE}/account is no operation of the spec"]),
        (
            _sent("GET", "/domains", Accept="*/*"),
            ["GetDomains: Accept is '*/*', expected 'application/json'"],
        ),
        (
            _sent("POST", f"/projects/{P}/predictions/query", body={"maxCount": "9", "bogus": 1}),
            [
                "QueryPredictions: body: Additional properties are not allowed "
                "('bogus' was unexpected)",
                "QueryPredictions: body.maxCount: '9' is not of type 'integer'",
            ],
        ),
        (
            _sent(
                "POST",
                f"/projects/{P}/predictions/query",
                body={"maxCount": 9, "iterationId": None},
            ),
            [],
        ),
        (
            Sent("GET", "http://blob.invalid/i/1?sig=x", {"Training-Key": KEY}, None),
            ["Training-Key sent to a blob link"],
        ),
        (Sent("GET", "http://blob.invalid/i/1?sig=x", {}, None), []),
    ],
)
def test_conformance_checker_finds_each_kind_of_problem(sent: Sent, problems: list[str]) -> None:
    assert check_request(sent, KEY) == problems


def test_conformance_checker_without_key_is_flagged() -> None:
    sent = Sent("GET", f"http://127.0.0.1:1{BASE}/domains", {"Accept": JSON_ACCEPT}, None)
    assert check_request(sent, KEY) == ["GetDomains: Training-Key header missing or wrong"]


# -- the client, driven through every public method ---------------------------------------------

CLIENT_OPERATIONS = {
    "GetDomains",
    "GetProjects",
    "GetProject",
    "GetIterations",
    "GetIteration",
    "GetIterationPerformance",
    "GetExports",
    "GetTags",
    "GetTag",
    "GetImages",
    "GetTaggedImages",
    "GetUntaggedImages",
    "GetImageCount",
    "GetTaggedImageCount",
    "GetUntaggedImageCount",
    "GetImagesByIds",
    "QueryPredictions",
    "GetArtifact",
    "DeleteProject",
    "DeleteIteration",
    "UnpublishIteration",
    "DeleteTag",
    "DeleteImages",
    "DeletePrediction",
    # The live trial's scratch project (bot.trial):
    "CreateProject",
    "CreateTag",
    "CreateImagesFromFiles",
    "UpdateImageMetadata",
    "TrainProject",
    "PublishIteration",
}


PREDICTION_RESOURCE = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
    "/providers/Microsoft.CognitiveServices/accounts/prediction"
)


def _drive_the_trial_calls(client: TrainingClient) -> None:
    """The creating calls only the live trial makes, on a scratch project it then deletes."""
    domain = next(d for d in client.get_domains() if d.type == "ObjectDetection")
    made = client.create_project("conformance scratch", domain_id=domain.id)
    a, b = client.create_tag(made.id, "a"), client.create_tag(made.id, "b")
    images = [(f"{n}.png", png(8, 8, str(n)), [a.id, b.id]) for n in range(15)]
    ids = client.create_images(made.id, images, metadata={"trial": "yes"})
    client.update_image_metadata(made.id, ids[:2], {"subject": "s-1"})
    iteration = client.train_project(made.id)
    while client.get_iteration(made.id, iteration.id).status == "Training":
        time.sleep(0.01)
    client.publish_iteration(made.id, iteration.id, "scratch", PREDICTION_RESOURCE)
    client.unpublish_iteration(made.id, iteration.id)
    client.delete_project(made.id)


def _drive_every_method(client: TrainingClient, emu: CustomVisionEmulator, folder: Path) -> None:
    data = emu.data
    p = data.project_ids()[0]
    first, second = data.iteration_ids(p)
    tag = data.tag_ids(p)[0]
    client.get_domains()
    client.get_projects()
    client.get_project(p)
    client.get_iterations(p)
    client.get_iteration(p, first)
    client.get_iteration_performance(p, first)
    client.get_iteration_performance(p, first, threshold=0.75, overlap_threshold=0.5)
    exports = client.get_exports(p, first)
    client.get_tags(p)
    client.get_tags(p, first)
    client.get_tag(p, tag)
    client.get_tag(p, tag, first)
    for kind in ("all", "tagged", "untagged"):
        tags = [] if kind == "untagged" else [tag]
        list(client.iter_images(p, kind=kind, page_size=7))
        list(client.iter_images(p, kind=kind, iteration_id=first, tag_ids=tags, skip=2))
        client.get_images_page(p, kind=kind, take=3, skip=1, order_by="Newest")
        client.count_images(p, kind=kind)
        client.count_images(p, kind=kind, iteration_id=first, tag_ids=tags)
    images = client.get_images_page(p, take=5)
    client.get_images_by_ids(p, [i.id for i in images])
    client.get_images_by_ids(p, [i.id for i in images], iteration_id=first)
    predictions = list(client.iter_predictions(p, max_count=3))
    client.query_predictions(p, {"iterationId": first, "orderBy": "Newest"}, max_count=2)
    for export in exports:
        if export.download_uri:
            client.download(export.download_uri, folder / "export.zip")
    uri = images[0].original_image_uri
    assert uri is not None
    client.download(uri, folder / "image.png")
    emu.faults.vnet = True
    relative = client.get_images_page(p, take=1)[0].thumbnail_uri
    assert relative is not None
    client.download(relative, folder / "thumb.png", project_id=p)
    emu.faults.vnet = False
    _drive_the_trial_calls(client)
    client.delete_predictions(p, [x.id for x in predictions[:3]])
    client.delete_images(p, [i.id for i in images[:2]])
    client.delete_images(p, [images[2].id], all_iterations=False)
    client.delete_tag(p, tag)
    client.delete_iteration(p, second)
    client.unpublish_iteration(p, first)
    client.delete_iteration(p, first)
    client.delete_project(p)


@pytest.mark.parametrize("real_quirks", [False, True], ids=["spec", "real-quirks"])
def test_conformance_every_client_request_matches_the_spec(
    tmp_path: Path, real_quirks: bool
) -> None:
    key = "conformance-key-7781"
    seed = Seed(projects=1, iterations=2, tags=3, images=30, predictions=8, image_bytes=256)
    answers: list[Exchange] = []
    # With the live service's departures from the spec (nulls, zone-less timestamps) the
    # client must still work; without them, every answer it accepted must be the spec's.
    faults = Faults(real_quirks=real_quirks, train_seconds=0.0)
    with CustomVisionEmulator(key, seed=seed, faults=faults) as emu:
        emu.hooks.append(answers.append)
        session, sent = recording_session()
        with session, TrainingClient(emu.endpoint, key, session=session, tps=1000) as client:
            _drive_every_method(client, emu, tmp_path)
    assert emu.hook_errors == []
    assert {c.operation_id for c in emu.calls} - {"Blob"} == CLIENT_OPERATIONS
    assert {c.status for c in emu.calls} <= {200, 202, 204}
    assert len(sent) == len(emu.calls)
    assert check_all(sent, key) == []
    assert check_calls(emu.calls) == []
    for answer in answers:  # what the client accepted is what the spec allows
        if answer.origin == "service" and not real_quirks:
            validate_response(answer.operation_id, answer.status, answer.response_body)
