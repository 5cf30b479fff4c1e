"""The commands as data: their one-line descriptions and their stored form, read back strictly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.commands import Delete, Export, request_from_dict
from bot.parser import load_request, parse
from tests.test_parser import FORMS, M1, M2, META_CASES, T2, D, E, I, P, T

# --- describe, contains_images ---------------------------------------------------------------

DESCRIPTIONS = [
    ("export account", "export the whole account"),
    ("export projects", "export the list of projects"),
    (f"export project {P}", "export project 6c1f2a3b\u2026"),
    (f"export project {P} --no-images", "export project 6c1f2a3b\u2026 (without images)"),
    (f"export iterations {P}", "export iterations of project 6c1f2a3b\u2026"),
    (f"export iteration {P} {I}", "export iteration 7d2e3f40\u2026 of project 6c1f2a3b\u2026"),
    (
        f"export performance {P} {I} --threshold 0.5 --overlap 0.25",
        "export performance of iteration 7d2e3f40\u2026 of project 6c1f2a3b\u2026"
        " (threshold 0.5, overlap 0.25)",
    ),
    (f"export tags {P}", "export tags of project 6c1f2a3b\u2026"),
    (
        f"export tag {P} {T} --iteration {I}",
        "export tag 8e3f4051\u2026 of project 6c1f2a3b\u2026 (iteration 7d2e3f40\u2026)",
    ),
    (
        f"export images {P} --tagged --iteration {I} --no-files",
        "export images of project 6c1f2a3b\u2026 (tagged, iteration 7d2e3f40\u2026, without files)",
    ),
    (f"export images {P} --untagged", "export images of project 6c1f2a3b\u2026 (untagged)"),
    (
        f"export images {P} --tag {T} --tag {T2}",
        "export images of project 6c1f2a3b\u2026 (with tags 8e3f4051\u2026 and 8e3f4051\u2026)",
    ),
    (f"export images {P} --ids {M1},{M2}", "export images of project 6c1f2a3b\u2026 (2 image ids)"),
    (
        f"export exports {P} {I} --download",
        "export model exports of iteration 7d2e3f40\u2026 of project 6c1f2a3b\u2026"
        " (with the exported files)",
    ),
    (
        f"export predictions {P} --no-files",
        "export stored predictions of project 6c1f2a3b\u2026 (without files)",
    ),
    (f"delete project {P}", "delete project 6c1f2a3b\u2026"),
    (f"delete iteration {P} {I}", "delete iteration 7d2e3f40\u2026 of project 6c1f2a3b\u2026"),
    (f"delete iterations {P}", "delete every trained iteration of project 6c1f2a3b\u2026"),
    (f"delete tag {P} {T}", "delete tag 8e3f4051\u2026 of project 6c1f2a3b\u2026"),
    (f"delete images {P} --ids {M1}", "delete 1 image of project 6c1f2a3b\u2026"),
    (f"delete images {P} --ids {M1},{M2}", "delete 2 images of project 6c1f2a3b\u2026"),
    (
        f"delete images {P} --tag {T}",
        "delete images with tag 8e3f4051\u2026 of project 6c1f2a3b\u2026",
    ),
    (f"delete images {P} --untagged", "delete untagged images of project 6c1f2a3b\u2026"),
    (f"delete images {P} --all", "delete all images of project 6c1f2a3b\u2026"),
    (f"delete predictions {P}", "delete all stored predictions of project 6c1f2a3b\u2026"),
    (
        f"delete predictions {P} --ids {M1},{M2}",
        "delete 2 stored predictions of project 6c1f2a3b\u2026",
    ),
    ("delete account", "delete the Custom Vision account"),
    (
        f"delete exports {P} {I}",
        "delete model exports of iteration 7d2e3f40\u2026 of project 6c1f2a3b\u2026",
    ),
]


@pytest.mark.parametrize(("text", "description"), DESCRIPTIONS)
def test_commands_describes_requests_in_one_plain_line(text: str, description: str) -> None:
    command = parse(text + ' --reason "secret\nstuff" --ticket X')
    assert isinstance(command, Export | Delete)
    assert command.describe() == description


CONTAINS_IMAGES = [
    ("export account", False, False),
    ("export projects", False, False),
    (f"export project {P}", True, True),
    (f"export project {P} --no-images", False, False),
    (f"export iteration {P} {I}", False, False),
    (f"export images {P}", True, True),
    (f"export images {P} --no-files", False, False),
    (f"export predictions {P}", True, True),
    (f"export predictions {P} --no-files", False, False),
    (f"export exports {P} {I}", False, False),
    (f"export exports {P} {I} --download", False, True),
    (f"export tags {P}", False, False),
]


@pytest.mark.parametrize(("text", "contains_images", "needs_files"), CONTAINS_IMAGES)
def test_commands_knows_which_exports_hold_image_files(
    text: str, contains_images: bool, needs_files: bool
) -> None:
    command = parse(text)
    assert isinstance(command, Export)
    assert command.contains_images is contains_images
    assert command.needs_files is needs_files
    # Only the project list and the account summary are free of personal data.
    assert command.personal is not text.startswith(("export account", "export projects"))


# --- storage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [text for text, expected in FORMS if isinstance(expected, Export | Delete)]
    + [text for text, meta in META_CASES if meta is not None],
)
def test_commands_requests_survive_a_json_round_trip(text: str) -> None:
    command = parse(text)
    assert isinstance(command, Export | Delete)
    stored = json.loads(json.dumps(command.to_dict()))
    assert type(command).from_dict(stored) == command
    assert request_from_dict(stored) == command
    assert load_request(stored) == command


def test_commands_to_dict_is_plain_json() -> None:
    command = parse(f"export images {P} --tag {T} --no-files --ticket DSR-1")
    assert isinstance(command, Export)
    assert command.to_dict() == {
        "verb": "export",
        "kind": "images",
        "project_id": P,
        "iteration_id": None,
        "tag_id": None,
        "image_ids": [],
        "tag_ids": [T],
        "tagging": "tagged",
        "files": False,
        "images": True,
        "download": False,
        "threshold": None,
        "overlap": None,
        "meta": {"ticket": "DSR-1", "reason": None},
    }
    delete = parse(f"delete predictions {P} --ids {M1}")
    assert isinstance(delete, Delete)
    assert delete.to_dict() == {
        "verb": "delete",
        "kind": "predictions",
        "project_id": P,
        "iteration_id": None,
        "tag_id": None,
        "selector": "ids",
        "image_ids": [],
        "prediction_ids": [M1],
        "meta": {"ticket": None, "reason": None},
    }


def _export(**changes: Any) -> dict[str, Any]:
    return {**Export(E.IMAGES, project_id=P).to_dict(), **changes}


def _delete(**changes: Any) -> dict[str, Any]:
    return {**Delete(D.IMAGES, project_id=P, selector="all").to_dict(), **changes}


BAD_STORED = [
    ({**_export(), "verb": "status"}, "not a stored export or delete (verb 'status')"),
    (_export(colour="red"), "unknown field in a stored export: colour"),
    (_export(kind="everything"), "kind: not a valid kind: 'everything'"),
    (_export(project_id="p1"), "project_id: not a GUID: 'p1'"),
    (_export(project_id=None), "not a valid export: export images needs <project-id>"),
    (_export(image_ids=[M1, "x"]), "image_ids: every item must be a GUID"),
    (_export(image_ids=M1), f"image_ids: not a list: '{M1}'"),
    (_export(files="no"), "files: not a boolean: 'no'"),
    (_export(tagging="some"), "tagging: must be one of ('all', 'tagged', 'untagged'), not 'some'"),
    (_export(threshold=0.5), "not a valid export: export images does not take --threshold"),
    (
        _export(tagging="all", tag_ids=[T]),
        "inconsistent fields for export images of project 6c1f2a3b\u2026 (with tag 8e3f4051\u2026)",
    ),
    (
        _export(image_ids=[M1, M1]),
        "inconsistent fields for export images of project 6c1f2a3b\u2026 (2 image ids)",
    ),
    (
        _export(meta={"ticket": "a\nb", "reason": None}),
        "not a valid export: --ticket must not contain control characters (found U+000A)",
    ),
    (
        _export(meta={"ticket": None, "reason": " padded"}),
        "inconsistent fields for export images of project 6c1f2a3b\u2026",
    ),
    (_export(meta={"ticket": 5}), "meta: ticket, reason and received must be strings or null"),
    (_export(meta={"who": "me"}), "meta: must be an object with ticket, reason and received"),
    (
        {**Export(E.PERFORMANCE, project_id=P, iteration_id=I).to_dict(), "threshold": 2},
        "not a valid export: --threshold must be between 0 and 1 (got 2.0)",
    ),
    (
        {**Export(E.PERFORMANCE, project_id=P, iteration_id=I).to_dict(), "overlap": True},
        "overlap: not a number: True",
    ),
    (
        _delete(selector=None),
        "not a valid delete: delete images needs one of --ids, --tag, --untagged, --all or"
        " --metadata/--tag-name",
    ),
    (
        _delete(selector="everything"),
        "selector: must be one of ('ids', 'tag', 'untagged', 'all', 'subject', None), not"
        " 'everything'",
    ),
    (
        _delete(selector="ids"),
        "not a valid delete: delete images needs one of --ids, --tag, --untagged, --all or"
        " --metadata/--tag-name",
    ),
    (
        _delete(selector="ids", prediction_ids=[M1]),
        "inconsistent fields for delete 0 images of project 6c1f2a3b\u2026",
    ),
    (
        {**Delete(D.ACCOUNT).to_dict(), "project_id": P},
        "inconsistent fields for delete the Custom Vision account",
    ),
]


@pytest.mark.parametrize(("data", "problem"), BAD_STORED)
def test_commands_load_request_rejects_bad_data(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_request(data)
    assert str(caught.value) == problem


@pytest.mark.parametrize("data", [None, [], "export", {"verb": "status"}])
def test_commands_request_from_dict_needs_a_stored_request(data: Any) -> None:
    with pytest.raises(ValueError):
        request_from_dict(data)
    with pytest.raises(ValueError):
        load_request(data)


def test_commands_from_dict_normalises_id_case() -> None:
    stored = _export(project_id=P.upper(), image_ids=[M1.upper()])
    assert Export.from_dict(stored) == Export(E.IMAGES, project_id=P, image_ids=(M1,))
