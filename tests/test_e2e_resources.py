"""End to end: several Custom Vision resources, each its own emulator (endpoint, key, limit).

The bot is configured with CUSTOM_VISION_RESOURCES=main,dev over signed HTTP; each emulator
records the calls it got, so a test sees which resource each request reached.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bot.checks import print_checks, run_checks
from emulators.customvision import CustomVisionEmulator, Faults, Seed
from emulators.stack import (
    APPROVER,
    CHANNEL,
    REQUESTER,
    Stack,
    resource_key,
)
from handlers.checks import slack_checks
from tests.conftest import StartStack, click_answer, request_pending

MAIN = Seed(projects=2, iterations=1, tags=2, images=12, predictions=2, image_bytes=128)
DEV = Seed(projects=1, iterations=1, tags=2, images=10, predictions=2, image_bytes=128, seed=2)


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=MAIN, more_resources={"dev": DEV})


def exported_manifest(stack: Stack, rid: str) -> dict[str, Any]:
    stack.wait_delivered()
    part = next(f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export"))
    with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
        data = json.loads(archive.read("manifest.json"))
    assert isinstance(data, dict)
    return data


def operations(cv: CustomVisionEmulator) -> list[str]:
    return [c.operation_id for c in cv.calls]


def test_e2e_resources_two_are_configured_each_with_its_own_client(stack: Stack) -> None:
    assert [r.name for r in stack.config.resources] == ["main", "dev"]
    clients = stack.bot.clients
    assert list(clients) == ["main", "dev"]
    assert clients["main"].endpoint != clients["dev"].endpoint
    # Each its own rate limiter: 10 calls/s is per resource.
    assert clients["main"].limiter is not clients["dev"].limiter


def test_e2e_resources_check_each_resource(stack: Stack, tmp_path: Path) -> None:
    checks = run_checks(stack.config, slack_checks, db=stack.bot.db)
    keys = [c for c in checks if c.name.startswith("Custom Vision training key")]
    assert [(c.name, c.ok) for c in keys] == [
        ("Custom Vision training key (main)", True),
        ("Custom Vision training key (dev)", True),
    ]
    assert keys[1].detail.endswith("1 project (GetProjects)")
    assert operations(stack.cvs["dev"]) == ["GetProjects"]


def test_e2e_resources_check_names_the_variables_of_the_resource_that_fails(
    stacks: StartStack,
) -> None:
    stack = stacks(
        seed=MAIN,
        more_resources={"dev": DEV},
        env={"CUSTOM_VISION_TRAINING_KEY_DEV": "wrong-dev-key-5555"},
        start_bot=False,
    )
    out = io.StringIO()
    assert print_checks(stack.config, slack_checks, stream=out) == 1
    text = out.getvalue()
    assert "Custom Vision training key (main): OK" in text or "(main)" in text
    dev_line = next(line for line in text.splitlines() if "(dev)" in line)
    assert "refused the key (HTTP 401)" in dev_line
    assert "CUSTOM_VISION_TRAINING_KEY_DEV" in dev_line
    assert "CUSTOM_VISION_ENDPOINT_DEV" in dev_line
    assert "wrong-dev-key-5555" not in text and resource_key("dev") not in text


def test_e2e_resources_export_of_a_project_on_the_second_resource_uses_its_client(
    stack: Stack,
) -> None:
    main, dev = stack.cvs["main"], stack.cvs["dev"]
    project = dev.data.project_ids()[0]
    queued = stack.command(REQUESTER, f"export project {project} --ticket T-1")
    rid = stack.request_id(queued)
    assert queued.json()["text"].startswith(
        f"{rid} queued: export project {project[:8]}… (on dev)."
    )
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done", stack.bot.store.get(
        rid
    ).error
    assert stack.bot.store.get(rid).command["resource"] == "dev"
    manifest = exported_manifest(stack, rid)
    assert manifest["source"]["endpoint_host"] == dev.endpoint.split("//")[1]
    # main was only asked for its project list (where is this project?), never about it.
    assert operations(main) == ["GetProjects"]
    assert "GetProject" in operations(dev) and "GetImages" in operations(dev)
    assert all(project not in c.path.lower() for c in main.calls)
    # The second export of the same project asks nobody where it is: the answer is cached.
    rid2 = stack.request_id(stack.command(REQUESTER, f"export tags {project} --ticket T-2"))
    assert stack.wait_status(rid2, "done", "failed", timeout=60) == "done"
    assert operations(main) == ["GetProjects"]


def test_e2e_resources_deletion_on_the_second_resource_runs_there(stack: Stack) -> None:
    main, dev = stack.cvs["main"], stack.cvs["dev"]
    project = dev.data.project_ids()[0]
    images = dev.data.image_ids(project)[:2]
    rid = request_pending(stack, f"delete images {project} --ids {','.join(images)} --ticket T-3")
    # A restart between the request and its approval: the stored request keeps its resource.
    stack.restart_bot()
    click_answer(stack, APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done", stack.bot.store.get(
        rid
    ).error
    assert "DeleteImages" in operations(dev)
    assert operations(main) == ["GetProjects"]
    assert set(dev.data.image_ids(project)).isdisjoint(images)


def test_e2e_resources_ambiguous_project_id_is_refused_with_the_candidates(
    stacks: StartStack,
) -> None:
    # The same seed on both: every project id exists on both resources (a copied estate).
    stack = stacks(seed=MAIN, more_resources={"dev": MAIN})
    project = stack.cv.data.project_ids()[0]
    answer = stack.command(REQUESTER, f"export project {project} --ticket T-4").json()["text"]
    assert stack.bot.store.count_requests_of(REQUESTER.user_id) == 0
    for cv in stack.cvs.values():
        assert operations(cv) == ["GetProjects"]
    name = next(p.name for p in stack.bot.clients["dev"].get_projects() if p.id == project)
    assert answer == (
        f"Project {project} exists on 2 Custom Vision resources: main (project {name!r}); "
        f"dev (project {name!r}). Say which with --resource &lt;name&gt;; nothing was done."
    )
    # Naming the resource settles it, with no lookup.
    rid = stack.request_id(
        stack.command(REQUESTER, f"export tags {project} --resource DEV --ticket T-4")
    )
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert operations(stack.cvs["main"]) == ["GetProjects"]
    assert "GetTags" in operations(stack.cvs["dev"])
    assert stack.bot.store.get(rid).command["resource"] == "dev"


def test_e2e_resources_unknown_resource_is_refused_with_no_call(stack: Stack) -> None:
    project = stack.cvs["dev"].data.project_ids()[0]
    answer = stack.command(
        REQUESTER, f"delete project {project} --resource staging --ticket T-5"
    ).json()["text"]
    assert answer == (
        "There is no Custom Vision resource named 'staging': the configured ones are main and "
        "dev (CUSTOM_VISION_RESOURCES)."
    )
    assert stack.bot.store.count_requests_of(REQUESTER.user_id) == 0
    for cv in stack.cvs.values():
        assert cv.calls == []


def test_e2e_resources_project_found_nowhere_is_refused(stack: Stack) -> None:
    project = "00000000-0000-4000-8000-000000000001"
    answer = stack.command(REQUESTER, f"export project {project} --ticket T-6").json()["text"]
    assert answer == (
        f"Project {project} is on none of the Custom Vision resources (main and dev); "
        "check the id. Nothing was done."
    )
    assert stack.bot.store.count_requests_of(REQUESTER.user_id) == 0


def test_e2e_resources_no_key_in_any_message_file_or_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dev = stack.cvs["dev"]
    project = dev.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project} --ticket T-7"))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.command(REQUESTER, f"export project {project} --resource nowhere")
    stack.wait_delivered()
    keys = [resource_key("main"), resource_key("dev")]
    texts = [m.text for m in stack.slack.messages(CHANNEL)]
    texts += [e.text for e in stack.slack.ephemerals(user_id=REQUESTER.user_id)]
    texts += [f.data.decode("latin-1") for f in stack.slack.files(CHANNEL)]
    texts += [caplog.text, repr(stack.config), repr(stack.bot.clients["dev"])]
    work = Path(stack.config.work_dir)
    texts += [p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file()]
    database = Path(stack.config.database)
    texts += [p.read_bytes().decode("latin-1") for p in database.parent.glob("*.db*")]
    for key in keys:
        assert all(key not in text for text in texts), key


def test_e2e_resources_export_account_covers_each_resource(stack: Stack) -> None:
    main, dev = stack.cvs["main"], stack.cvs["dev"]
    rid = stack.request_id(stack.command(REQUESTER, "export account --ticket T-8"))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done", stack.bot.store.get(
        rid
    ).error
    stack.wait_delivered()
    part = next(f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export"))
    with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
        names = set(archive.namelist())
        summary = json.loads(archive.read("resources.json"))
        accounts = {
            name: json.loads(archive.read(f"resources/{name}/account.json"))
            for name in ("main", "dev")
        }
        readme = archive.read("README.txt").decode()
    assert [(r["name"], r["projects"]) for r in summary] == [("main", 2), ("dev", 1)]
    for name, cv in (("main", main), ("dev", dev)):
        assert accounts[name]["endpoint_host"] == cv.endpoint.split("//")[1]
        assert [p["id"] for p in accounts[name]["per_project"]] == cv.data.project_ids()
        assert {"GetDomains", "GetProjects", "GetImageCount"} <= set(operations(cv))
        assert f"resources/{name}/domains.json" in names
        for project in cv.data.project_ids():
            assert f"resources/{name}/projects/{project}/tags.json" in names
    assert "resources/<name>/account.json" in readme
    manifest = exported_manifest(stack, rid)
    assert manifest["counts"]["resources"] == 2 and manifest["counts"]["projects"] == 3


def test_e2e_resources_a_resource_that_cannot_be_asked_is_named_and_nothing_stored(
    stack: Stack,
) -> None:
    stack.cvs["dev"].faults = Faults(quota_exhausted=3600.0)
    project = stack.cv.data.project_ids()[0]
    answer = stack.command(REQUESTER, f"export project {project} --ticket T-9").json()["text"]
    assert answer.startswith(
        f"Could not tell which Custom Vision resource holds project {project}; it is on main, "
        "but these resources could not be asked: dev: "
    ), answer
    assert answer.endswith(
        "Try again later, or say which with --resource &lt;name&gt;; nothing was done."
    )
    assert stack.bot.store.count_requests_of(REQUESTER.user_id) == 0
    # Once dev answers again, the same command goes through.
    stack.cvs["dev"].faults = Faults()
    rid = stack.request_id(stack.command(REQUESTER, f"export tags {project} --ticket T-9"))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert stack.bot.store.get(rid).command["resource"] == "main"
