"""End to end over signed HTTP: `/cv find` and `/cv export subject` look for one person in every
project and trained iteration of two Custom Vision resources (`main` and `dev`, each its own
emulator with its own key and record of calls), through the real Training API client."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bot import audit
from bot.subject import SEARCHES_PER_RESOURCE
from emulators.customvision import Call, Faults, Seed
from emulators.slack.records import UploadedFile
from emulators.stack import APPROVER, CHANNEL, REQUESTER, STRANGER, Stack
from tests.conftest import SMALL, StartStack, click_answer, exported, request_pending

DONE = "Nothing was changed."
DEV = Seed(projects=1, iterations=1, tags=2, images=10, predictions=2, image_bytes=256, seed=2)


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SMALL, more_resources={"dev": DEV})


def calls_to(stack: Stack, operation: str) -> list[Call]:
    """Return the calls of `operation` that reached any resource."""
    return [c for cv in stack.cvs.values() for c in cv.calls_to(operation)]


def all_calls(stack: Stack) -> int:
    return sum(len(cv.calls) for cv in stack.cvs.values())


@dataclass(frozen=True)
class Person:
    """Where the seeded data subject (customer 4711, tag "Jane Doe") is."""

    first: str  # project on main: 3 images tagged and with metadata, 1 deleted from the workspace
    iteration: str  # trained (published) after they were added: holds all 3
    second: str  # project on dev: 2 images with the metadata, in the workspace only
    gone: str  # the image only the snapshot still holds
    mine: tuple[str, ...]  # the 3 images of the person in the first project (gone included)


def seed_person(stack: Stack) -> Person:
    """Spread customer 4711 over two projects on two resources, one image held only by a
    published snapshot."""
    data = stack.cv.data
    first = data.project_ids()[0]
    dev = stack.cvs["dev"].data
    second = dev.project_ids()[0]
    jane = data.add_tag(first, "Jane Doe")
    mine = data.add_images(first, 3, tag_ids=[jane], metadata={"customer": "4711"})
    data.add_images(first, 2, metadata={"customer": "4712"})  # someone else
    data.add_images(first, 1, metadata={"name": "O'Brien"})
    iteration = data.add_iteration(first, publish_name="faces-prod")
    data.api_delete_images(
        first, mine[:1], all_images=False, all_iterations=False, delay=lambda *_: 0.0
    )
    dev.add_images(second, 2, metadata={"customer": "4711", "site": "Berlin"})
    return Person(first, iteration, second, mine[0], tuple(mine))


def answer_to(stack: Stack, text: str) -> str:
    """Type `text` as the requester; return the bot's answer (inline, or through the
    response_url after a holding answer), checking that it was private."""
    shown = len(stack.slack.ephemerals(user_id=REQUESTER.user_id))
    response = stack.command(REQUESTER, text)
    assert response.status_code == 200
    assert response.json()["response_type"] == "ephemeral"

    def answers() -> list[str]:
        fresh = stack.slack.ephemerals(user_id=REQUESTER.user_id)[shown:]
        return [e.text for e in fresh if not e.text.startswith("Working on it")]

    assert stack.slack.wait_for(lambda: bool(answers()), timeout=30), text
    return answers()[0]


def find(stack: Stack, text: str) -> str:
    """Type a find as the requester; return its private answer."""
    answer = answer_to(stack, text)
    assert DONE in answer or "Usage:" in answer, answer
    return answer


def test_e2e_find_counts_a_person_across_projects_and_snapshots(stack: Stack) -> None:
    person = seed_person(stack)
    posted = len(stack.slack.messages(CHANNEL))
    answer = find(stack, "find --metadata customer=4711")
    assert answer.startswith(
        "Found images in 2 projects (4 images in the workspaces); 3 projects and 6 trained"
        " iterations searched for metadata customer=4711:"
    ), answer
    first = next(line for line in answer.splitlines() if f"{person.first[:8]}… on main" in line)
    assert first.endswith(
        'workspace: 2 images; iteration "Iteration 3" (published as "faces-prod"): 3 images'
    ), first
    second = next(line for line in answer.splitlines() if f"{person.second[:8]}… on dev" in line)
    assert second.endswith("workspace: 2 images"), second
    assert person.gone not in answer and "http" not in answer
    assert len(stack.slack.messages(CHANNEL)) == posted, "find posts nothing in the channel"
    counts = calls_to(stack, "GetImageCount")
    assert {c.query["$filter"] for c in counts} == {"customer eq '4711'"}
    assert stack.cvs["dev"].calls_to("GetImageCount"), "the second resource was searched"
    assert not calls_to(stack, "GetImages"), "find counts, it never lists images"


def test_e2e_find_tag_name_any_case_anded_with_metadata(stack: Stack) -> None:
    person = seed_person(stack)
    answer = find(stack, 'find --tag-name "jane DOE" --metadata customer=4711')
    assert answer.startswith("Found images in 1 project (2 images in the workspaces)"), answer
    assert '(tag "Jane Doe")' in answer
    tagged = [c for c in calls_to(stack, "GetImageCount") if "tagIds" in c.query]
    assert tagged and all(c.query["$filter"] == "customer eq '4711'" for c in tagged)
    assert all(c.path.split("/")[-3] == person.first for c in tagged)


def test_e2e_find_quotes_a_value_with_a_quote_as_odata_requires(stack: Stack) -> None:
    seed_person(stack)
    answer = find(stack, 'find --metadata "name=O\'Brien"')
    assert "workspace: 1 image;" in answer
    filters = {c.query["$filter"] for c in calls_to(stack, "GetImageCount")}
    assert filters == {"name eq 'O''Brien'"}
    assert all(c.status == 200 for c in calls_to(stack, "GetImageCount"))


def test_e2e_find_no_match_says_so_and_stores_nothing(stack: Stack) -> None:
    seed_person(stack)
    answer = find(stack, "find --metadata customer=9999")
    assert answer.startswith("No images match: 3 projects and 6 trained iterations searched"), (
        answer
    )
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_find_narrowed_to_one_project_and_unknown_project(stack: Stack) -> None:
    person = seed_person(stack)
    missing = "0b0b0b0b-0000-4000-8000-000000000000"
    answer = find(
        stack, f"find --metadata customer=4711 --project {person.second} --project {missing}"
    )
    assert answer.startswith("Found images in 1 project (2 images in the workspaces); 1 project")
    assert f"No project `{missing}` found." in answer
    assert {c.path.split("/")[-3] for c in calls_to(stack, "GetImageCount")} == {person.second}
    assert not stack.cv.calls_to("GetImageCount"), "main holds none of the projects asked for"


def test_e2e_find_narrowed_to_named_resources(stack: Stack) -> None:
    person = seed_person(stack)
    answer = find(stack, "find --metadata customer=4711 --resource DEV")
    assert answer.startswith(
        "Found images in 1 project (2 images in the workspaces); 1 project and 1 trained"
        " iteration searched for metadata customer=4711 on resource dev:"
    ), answer
    assert f"{person.second[:8]}…" in answer
    assert stack.cv.calls == [], "main was not named: it is not asked anything"
    both = find(stack, "find --metadata customer=4711 --resource dev --resource Main")
    assert both.startswith("Found images in 2 projects (4 images in the workspaces); 3 projects")
    assert "on resources dev and main:" in both.splitlines()[0]


UNKNOWN_RESOURCE = (
    "There is no Custom Vision resource named 'prod': the configured ones are main and dev"
    " (CUSTOM_VISION_RESOURCES)."
)


@pytest.mark.parametrize(
    ("text", "usage"),
    [
        ("find --metadata customer=4711 --resource dev --resource prod", "/cv find [--metadata"),
        (
            "export subject --metadata customer=4711 --resource prod --ticket T-1",
            "/cv export subject [--metadata",
        ),
    ],
)
def test_e2e_find_and_export_subject_refuse_an_unknown_resource_before_any_call(
    stack: Stack, text: str, usage: str
) -> None:
    seed_person(stack)
    answer = stack.command(REQUESTER, text).json()
    assert answer["response_type"] == "ephemeral"
    assert answer["text"].startswith(f"{UNKNOWN_RESOURCE}\nUsage: `{usage}"), answer["text"]
    time.sleep(0.2)
    assert all_calls(stack) == 0
    assert stack.bot.store.requests_of(REQUESTER.user_id, open_only=False) == []


def test_e2e_export_subject_narrowed_to_one_resource(stack: Stack) -> None:
    person = seed_person(stack)
    rid, parts = exported(
        stack, "export subject --metadata customer=4711 --resource dev --ticket T"
    )
    assert stack.bot.store.get(rid).command["selectors"]["resources"] == ["dev"]
    content = unzip(parts)
    search = json.loads(content["manifest.json"])["request"]["search"]
    assert [r["name"] for r in search["resources"]] == ["dev"]
    assert search["description"] == "metadata customer=4711 on resource dev"
    assert {p["id"] for p in json.loads(content["projects.json"])} == {person.second}
    assert stack.cv.calls == [], "main was not named: it is not asked anything"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("find", "find needs a selector: --metadata KEY=VALUE or --tag-name NAME"),
        (
            "find --project 6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b",
            "find needs a selector: --metadata KEY=VALUE or --tag-name NAME",
        ),
        ("find --metadata customer", "--metadata needs KEY=VALUE: 'customer' has no '='"),
        ("find --metadata =4711", "--metadata '=4711' has an empty key"),
        ("find --metadata customer=", "--metadata 'customer=' has an empty value"),
        ("find --metadata customer=*", "--metadata customer=* would match every image"),
        ("find --tag-name *", "--tag-name * would match every image"),
        (f"find --metadata {'k' * 129}=1", "--metadata key is too long: 129 characters"),
        (f"find --metadata k={'v' * 257}", "value of 'k' is too long: 257 characters"),
        ("find --metadata a=1 --metadata a=2", "--metadata gives 'a' twice with different"),
        ("find --metadata 'a b=1'", "--metadata key 'a b' cannot be searched"),
        ("find --metadata customer=4711 --project nope", "'nope' is not a valid project id"),
        ("find --metadata customer=4711 --resource 'a b'", "'a b' is not a resource name"),
    ],
)
def test_e2e_find_bad_input_answers_and_calls_nothing(
    stack: Stack, text: str, problem: str
) -> None:
    before = all_calls(stack)
    answer = find(stack, text)
    assert problem in answer
    assert "Usage: `/cv find [--metadata KEY=VALUE]..." in answer
    time.sleep(0.2)
    assert all_calls(stack) == before


def test_e2e_find_needs_a_requester_and_audits_the_search(stack: Stack) -> None:
    seed_person(stack)
    service = stack.bot.service
    service.rules = replace(service.rules, requesters=frozenset({REQUESTER.user_id}))
    before = all_calls(stack)
    refused = stack.command(STRANGER, "find --metadata customer=4711").json()["text"]
    assert "BOT_REQUESTERS" in refused
    assert all_calls(stack) == before
    find(stack, "find --metadata customer=4711")
    events = [e for e in audit.events(stack.bot.db.conn) if e.action.startswith("find")]
    assert [(e.actor, e.action, e.outcome) for e in events] == [
        (STRANGER.user_id, "find.refused", "refused"),
        (REQUESTER.user_id, "find", "ok"),
    ]
    assert events[1].details == {
        "selector": "metadata customer=4711",
        "projects": 3,
        "workspace_images": 4,
    }


def test_e2e_help_find(stack: Stack) -> None:
    text = stack.command(REQUESTER, "help find").json()["text"]
    assert text.startswith(
        "/cv find [--metadata KEY=VALUE]... [--tag-name NAME]... [--project &lt;project-id&gt;]..."
        " [--resource &lt;name&gt;]..."
    ), text
    assert "--resource &lt;name&gt;: search only these Custom Vision resources" in text
    assert "Stored predictions carry no metadata" in text


def unzip(parts: list[UploadedFile]) -> dict[str, bytes]:
    content: dict[str, bytes] = {}
    for part in parts:
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            content.update({name: archive.read(name) for name in archive.namelist()})
    return content


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def test_e2e_export_subject_packages_every_project_and_the_snapshot_copy(stack: Stack) -> None:
    person = seed_person(stack)
    rid, parts = exported(
        stack, "export subject --metadata customer=4711 --ticket DSR-4711 --reason 'Art. 15'"
    )
    content = unzip(parts)
    manifest = json.loads(content["manifest.json"])
    for entry in manifest["files"]:
        assert hashlib.sha256(content[entry["name"]]).hexdigest() == entry["sha256"]
    search = manifest["request"]["search"]
    assert search["selector"] == {
        "metadata": [["customer", "4711"]],
        "tag_names": [],
        "project_ids": [],
    }
    assert search["filter"] == "customer eq '4711'"
    assert [r["name"] for r in search["resources"]] == ["main", "dev"]
    searched = {
        p["id"]: [i["id"] for i in p["iterations"]]
        for r in search["resources"]
        for p in r["projects"]
    }
    every = [*stack.cv.data.project_ids(), *stack.cvs["dev"].data.project_ids()]
    assert set(every) == set(searched)
    assert person.iteration in searched[person.first]
    projects = {p["id"] for p in json.loads(content["projects.json"])}
    assert projects == {person.first, person.second}

    first = lines_of(content[f"projects/{person.first}/images.jsonl"])
    held = {(r["image"]["id"], r["iterationId"]) for r in first}
    mine = stack.cv.data.image_ids(person.first, person.iteration)
    assert person.gone not in stack.cv.data.image_ids(person.first)
    assert (person.gone, person.iteration) in held
    assert (person.gone, None) not in held
    assert all(r["image"]["metadata"] == {"customer": "4711"} for r in first)
    assert {i for i, _ in held} <= set(mine) and len({i for i, _ in held}) == 3
    # The image only the snapshot holds comes from the snapshot's folder, byte for byte.
    gone = next(r for r in first if r["image"]["id"] == person.gone)
    assert gone["file"].startswith(f"images/iterations/{person.iteration}/")
    assert content[gone["file"]] == stack.cv.image_bytes(person.gone)
    second = lines_of(content[f"projects/{person.second}/images.jsonl"])
    assert [(r["scope"], r["image"]["metadata"]["site"]) for r in second] == [
        ("workspace", "Berlin"),
        ("workspace", "Berlin"),
    ]
    dev = stack.cvs["dev"]
    assert all(content[r["file"]] == dev.image_bytes(r["image"]["id"]) for r in second)
    assert manifest["counts"]["images"] == 5
    assert manifest["counts"]["projects_searched"] == 3
    readme = content["README.txt"].decode("utf-8")
    assert "The person's images were found by metadata customer=4711." in readme
    assert "stored predictions (images sent to a published iteration for prediction)" in readme
    assert "published as faces-prod" in readme
    index = content["index.html"].decode("utf-8")
    assert f"index/images-{person.first}-0001.html" in index
    assert f"index/images-{person.second}-0001.html" in index
    assert f"annotations/{person.second}.coco.json" in content
    assert stack.bot.store.get(rid).status == "done"


def test_e2e_export_subject_matching_nothing_says_so(stack: Stack) -> None:
    seed_person(stack)
    _, parts = exported(stack, "export subject --tag-name nobody --ticket DSR-1")
    content = unzip(parts)
    manifest = json.loads(content["manifest.json"])
    assert json.loads(content["projects.json"]) == []
    assert manifest["counts"]["projects_searched"] == 3
    assert not [n for n in content if n.startswith("images/")]


def test_e2e_export_images_of_one_project_by_the_same_selectors(stack: Stack) -> None:
    person = seed_person(stack)
    first = f"export images {person.first} --metadata customer=4711"
    _, parts = exported(stack, f"{first} --tag-name 'JANE DOE' --ticket DSR-2")
    workspace = lines_of(unzip(parts)["images.jsonl"])
    assert len(workspace) == 2 and person.gone not in {r["image"]["id"] for r in workspace}
    _, parts = exported(stack, f"{first} --iteration {person.iteration} --no-files")
    snapshot = lines_of(unzip(parts)["images.jsonl"])
    assert {r["image"]["id"] for r in snapshot} >= {person.gone}
    assert [r["file"] for r in snapshot] == [None, None, None]
    filters = {c.query.get("$filter") for c in calls_to(stack, "GetImages")}
    assert filters == {"customer eq '4711'"}


def test_e2e_delete_images_of_one_person_with_four_eyes_and_snapshots(stack: Stack) -> None:
    person = seed_person(stack)
    data = stack.cv.data
    targeted = set(person.mine)
    rid = request_pending(
        stack, f"delete images {person.first} --metadata customer=4711 --ticket DSR-3"
    )
    shown = json.dumps(stack.announcement(rid).blocks)
    assert "3 images matching metadata customer=4711" in shown, shown
    assert "2 in the workspace" in shown and "faces-prod" in shown
    assert "cannot approve your own request" in click_answer(stack, REQUESTER, rid, "approve")
    assert stack.cv.deleted_image_counts() == {}
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    assert set(stack.cv.deleted_image_counts()) == targeted
    calls = stack.cv.calls_to("DeleteImages")
    assert calls and all(c.query.get("allIterations") == "true" for c in calls)
    assert not stack.cvs["dev"].calls_to("DeleteImages"), "the other resource is untouched"
    left = set(data.image_ids(person.first)) | set(data.image_ids(person.first, person.iteration))
    assert not left & targeted


def test_e2e_find_keeps_a_few_projects_of_one_resource_in_flight(stacks: StartStack) -> None:
    # Each call takes 200 ms, longer than the 100 ms a 10 calls/s limit allows per call: one
    # project after another would leave the limit idle, so a few are searched at once.
    seed = Seed(projects=6, iterations=1, tags=2, images=10, predictions=0, image_bytes=64)
    stack = stacks(seed=seed, faults=Faults(latency=0.2))
    answer = find(stack, "find --metadata customer=4711")
    assert answer.startswith("No images match: 6 projects and 6 trained iterations searched")
    searched = [c for c in stack.cv.calls if c.operation_id in ("GetIterations", "GetImageCount")]
    assert len(searched) == 6 * 3
    assert 1 < max(c.in_flight for c in searched) <= SEARCHES_PER_RESOURCE
