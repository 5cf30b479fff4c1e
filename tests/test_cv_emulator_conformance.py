"""The emulator against the spec: routes, response schemas, and the spec's own examples replayed.

Also checks the checker (tests/spec_schema.py) itself, and that tests/spec/ is an intact copy.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from emulators.customvision import CustomVisionEmulator, Faults, Seed, routes
from tests.spec_schema import (
    EXAMPLES_DIR,
    SPEC_DIR,
    SpecChecker,
    SpecViolation,
    example,
    operation,
    operation_for,
    read_manifest,
    shared_spec_dir,
    spec_copy_problems,
    validate_response,
)
from tests.test_client_conformance import CLIENT_OPERATIONS

KEY = "conformance-key-81c2"
SEED = Seed(projects=2, iterations=3, tags=3, images=30, predictions=5, image_bytes=300)
EXAMPLE_IDS = sorted(path.stem for path in EXAMPLES_DIR.glob("*.json"))


# ------------------------------------------------------------- the spec copy


def test_spec_copy_matches_its_manifest_and_the_shared_original() -> None:
    # The manifest is in the repo, so this holds on a clean clone too; on a machine that has
    # the shared reference folder beside the repo, the copy must also still equal it.
    assert spec_copy_problems(SPEC_DIR, read_manifest(), shared_spec_dir()) == []


@pytest.mark.parametrize(
    ("folder", "name", "content", "problem"),
    [
        # content None: the file is deleted
        ("copy", "examples-v3.3/GetTag.json", b"{}", "differs from the manifest's sha256"),
        ("copy", "training-v3.3.json", None, "listed in the manifest, missing"),
        ("copy", "examples-v3.3/Extra.json", b"{}", "not in the manifest"),
        (
            "original",
            "examples-v3.3/GetTags.json",
            b"[]",
            "the original's sha256 differs from the manifest's",
        ),
        ("original", "examples-v3.3/GetTags.json", None, "not in the original"),
        ("original", "examples-v3.3/New.json", b"{}", "in the original, not copied"),
    ],
)
def test_spec_copy_problems_names_each_difference(
    tmp_path: Path, folder: str, name: str, content: bytes | None, problem: str
) -> None:
    copy, original = tmp_path / "copy", tmp_path / "original"
    for each in (copy, original):
        shutil.copytree(SPEC_DIR, each)
    assert spec_copy_problems(copy, read_manifest(), original) == []
    changed = tmp_path / folder / name
    if content is None:
        changed.unlink()
    else:
        changed.write_bytes(content)
    assert spec_copy_problems(copy, read_manifest(), original) == [f"{name}: {problem}"]


def test_read_manifest_refuses_a_malformed_line(tmp_path: Path) -> None:
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{'0' * 64}  a.json\nnot a digest  b.json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not"):
        read_manifest(manifest)


# ----------------------------------------------------------- the checker itself


KNOWN_BAD_EXAMPLES = {
    # The spec's own examples disagree with its schema here: counts given as strings ("10"),
    # and a file body shown as the placeholder text "{file}".
    ("GetTaggedImageCount", "200"),
    ("GetUntaggedImageCount", "200"),
    ("GetArtifact", "200"),
}


def test_spec_examples_validate_except_known_deviations() -> None:
    failing = set()
    for operation_id in EXAMPLE_IDS:
        found = example(operation_id)
        assert found is not None
        for status, response in found["responses"].items():
            try:
                validate_response(operation_id, int(status), response.get("body"))
            except SpecViolation:
                failing.add((operation_id, status))
    assert failing == KNOWN_BAD_EXAMPLES


IMAGE = {
    "id": "4d6eb844-42ee-42bc-bd6f-c32455ef07c9",
    "created": "2017-12-19T15:56:10Z",
    "width": 10,
    "height": 10,
    "tags": [{"tagId": "b607964f-7bd6-4a3b-a869-6791fb6aab87", "tagName": "t", "created": None}],
}


@pytest.mark.parametrize(
    ("operation_id", "status", "body", "strict", "problem"),
    [
        ("GetImages", 200, [IMAGE], False, "None is not of type 'string'"),
        ("GetImages", 200, [{**IMAGE, "tags": None}], True, None),
        ("GetImages", 200, [{**IMAGE, "id": "4d6eb844"}], False, "is not a 'uuid'"),
        ("GetImages", 200, [{**IMAGE, "created": "yesterday"}], False, "is not a 'date-time'"),
        ("GetImages", 200, [{**IMAGE, "tags": [], "widht": 3}], True, "'widht' was unexpected"),
        ("GetImages", 200, [{**IMAGE, "tags": [], "widht": 3}], False, None),
        ("GetImages", 200, {"id": "x"}, False, "is not of type 'array'"),
        ("GetTag", 200, {"id": IMAGE["id"], "name": "n", "type": "Regular"}, False, "required"),
        ("GetTag", 200, {"name": "n", "description": None, "type": "Odd"}, False, None),
        ("GetTag", 200, {"name": "n", "description": None, "type": "Odd"}, True, "not one of"),
        ("GetImageCount", 200, 2**31, False, "int32"),
        ("GetImageCount", 200, "10", False, "is not of type 'integer'"),
        ("DeleteImages", 202, None, True, None),
        ("DeleteImages", 200, [], True, "status 200 is not in the spec"),
        ("DeleteTag", 204, {"x": 1}, True, "defines no body"),
        ("DeleteTag", 404, {"code": "NotFoundTag", "message": "m"}, True, None),
        ("DeleteTag", 404, {"code": "Nope", "message": "m"}, True, "not one of"),
        ("DeleteTag", 401, {"error": {"code": "401", "message": "m"}}, False, "required"),
        ("GetArtifact", 200, b"\x89PNG", True, None),
        ("GetArtifact", 200, "text", True, "expected file bytes"),
    ],
)
def test_spec_checker_verdicts(
    operation_id: str, status: int, body: Any, strict: bool, problem: str | None
) -> None:
    if problem is None:
        validate_response(operation_id, status, body, strict=strict)
    else:
        with pytest.raises(SpecViolation, match=re.escape(problem)):
            validate_response(operation_id, status, body, strict=strict)


@pytest.mark.parametrize(
    ("method", "path", "operation_id", "params"),
    [
        ("GET", "/customvision/v3.3/training/domains", "GetDomains", {}),
        ("GET", "/projects/abc", "GetProject", {"projectId": "abc"}),
        ("POST", "/projects/import", "ImportProject", {}),
        ("GET", "/projects/p/images/count?x=1", "GetImageCount", {"projectId": "p"}),
        ("GET", "/projects/p/images/id", "GetImagesByIds", {"projectId": "p"}),
        ("DELETE", "/projects/p/iterations/i/publish", "UnpublishIteration", {}),
        ("POST", "http://h:1/customvision/v3.3/training/projects/p/predictions/query", None, {}),
    ],
)
def test_operation_for_matches_concrete_paths(
    method: str, path: str, operation_id: str | None, params: dict[str, str]
) -> None:
    found = operation_for(method, path)
    assert found.operation_id == (operation_id or "QueryPredictions")
    for name, value in params.items():
        assert found.path_params[name] == value
    with pytest.raises(LookupError):
        operation_for("PUT", path)


GUID = "e31a14ab-5d78-4f7b-a267-3a1e4fd8a758"


@pytest.mark.parametrize(
    ("operation_id", "query", "body", "problem"),
    [
        ("GetImagesByIds", {"imageIds": ",".join([GUID] * 256)}, None, None),
        ("GetImagesByIds", {"imageIds": ",".join([GUID] * 257)}, None, "at most 256"),
        ("GetImagesByIds", {"imageIds": "abc"}, None, "not a GUID"),
        ("GetImagesByIds", {"imageIDs": GUID}, None, "unknown query parameter 'imageIDs'"),
        ("DeleteImages", {"imageIds": GUID, "allIterations": "True"}, None, "not true/false"),
        ("GetTaggedImages", {"take": "257"}, None, "above the maximum 256"),
        ("GetTaggedImages", {"orderBy": "newest"}, None, "not one of Newest, Oldest"),
        ("DeletePrediction", {}, None, "required query parameter missing"),
        ("QueryPredictions", {}, None, "the request body is required"),
        ("QueryPredictions", {}, {"maxCount": "ten"}, "is not of type 'integer'"),
        ("QueryPredictions", {}, {"maxCount": 10, "orderBy": "Oldest"}, None),
        ("GetIterationPerformance", {"threshold": "0.9"}, None, None),
    ],
)
def test_operation_request_checks(
    operation_id: str, query: dict[str, str], body: Any, problem: str | None
) -> None:
    op = operation_for(operation(operation_id).method, operation(operation_id).path_template)
    op = type(op)(
        op.operation_id,
        op.method,
        op.path_template,
        op.parameters,
        op.responses,
        {"projectId": GUID, "iterationId": GUID},
    )
    if problem is None:
        op.validate_request(query, body)
    else:
        with pytest.raises(SpecViolation, match=re.escape(problem)):
            op.validate_request(query, body)


# ----------------------------------------------------------------- the emulator


def test_emulator_routes_are_spec_operations() -> None:
    for method, template, operation_id in routes():
        spec_op = operation(operation_id)
        assert (spec_op.method, spec_op.path_template) == (method, template)


def test_emulator_routes_every_operation_the_client_uses() -> None:
    assert {operation_id for _, _, operation_id in routes()} >= CLIENT_OPERATIONS


@pytest.fixture
def emulator() -> Iterator[tuple[CustomVisionEmulator, SpecChecker]]:
    checker = SpecChecker(strict=True, check_requests=True)
    emu = CustomVisionEmulator(
        KEY, seed=SEED, faults=Faults(async_delete_delay=0.0, real_quirks=False)
    ).start()
    emu.hooks.append(checker)
    try:
        yield emu, checker
    finally:
        emu.stop()
    assert emu.hook_errors == []
    checker.assert_clean()


def _ids_for(emu: CustomVisionEmulator, operation_id: str) -> dict[str, Any]:
    """Real ids to put where the example has Microsoft's."""
    data = emu.data
    p = data.project_ids()[0]
    published, middle, _ = data.iteration_ids(p)
    image_ids = data.image_ids(p)
    image = emu.data.api_images_by_ids(p, image_ids[:1], None, data.links("", vnet=True))[0]
    if operation_id == "DeleteProject":
        data.unpublish(p, published)
    return {
        "projectId": p,
        # Deleting needs an unpublished iteration; unpublishing a published one.
        "iterationId": middle if operation_id == "DeleteIteration" else published,
        "tagId": data.tag_ids(p)[0],
        "imageIds": image_ids[:2],
        "ids": data.prediction_ids(p)[:2],
        "path": image["thumbnailUri"],
        "tags": data.tag_ids(p),
    }


def _covers(expected: Any, actual: Any, where: str) -> list[str]:
    """Every field the example shows is in the emulator's answer too (first items of lists)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        missing = [f"{where}.{k}" for k in expected if k not in actual]
        return missing + [
            problem
            for k in expected
            if k in actual
            for problem in _covers(expected[k], actual[k], f"{where}.{k}")
        ]
    if isinstance(expected, list) and isinstance(actual, list) and expected and actual:
        return _covers(expected[0], actual[0], f"{where}[0]")
    return []


@pytest.mark.parametrize("operation_id", EXAMPLE_IDS)
def test_emulator_answers_the_spec_examples(
    emulator: tuple[CustomVisionEmulator, SpecChecker], operation_id: str
) -> None:
    emu, checker = emulator
    spec_op = operation(operation_id)
    sample = example(operation_id)
    assert sample is not None
    real = _ids_for(emu, operation_id)
    path = spec_op.path_template
    query: dict[str, str] = {}
    body: Any = None
    for param in spec_op.parameters:
        if param.name not in sample["parameters"]:
            continue
        value = sample["parameters"][param.name]
        if param.location == "path":
            path = path.replace("{" + param.name + "}", real[param.name])
        elif param.location == "query":
            value = real.get(param.name, value)
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            query[param.name] = str(value)
        elif param.location == "body":
            body = dict(value)
            body["tags"] = [{**t, "id": real["tags"][0]} for t in body.get("tags", [])]
    with requests.request(
        spec_op.method,
        emu.api_url + path,
        params=query,
        json=body,
        headers={"Training-Key": KEY},
    ) as response:
        assert str(response.status_code) in sample["responses"], response.text
        if response.headers.get("Content-Type", "").startswith("application/json"):
            answer = response.json()
            expected = sample["responses"][str(response.status_code)].get("body")
            assert _covers(expected, answer, operation_id) == []
    assert checker.checked[operation_id] == 1


def test_emulator_answers_conform_under_every_fault_and_mode(
    emulator: tuple[CustomVisionEmulator, SpecChecker],
) -> None:
    emu, checker = emulator
    p = emu.data.project_ids()[1]  # object detection: regions, bounding boxes
    with requests.Session() as http:
        http.headers["Training-Key"] = KEY
        for vnet in (False, True):
            emu.faults.vnet = vnet
            for suffix in ("/images", "/images/tagged", "/images/untagged", "/tags", ""):
                assert http.get(f"{emu.api_url}/projects/{p}{suffix}").ok
            query = http.post(f"{emu.api_url}/projects/{p}/predictions/query", json={})
            assert query.ok
            iteration = emu.data.iteration_ids(p)[0]
            for suffix in ("", "/performance", "/export"):
                assert http.get(f"{emu.api_url}/projects/{p}/iterations/{iteration}{suffix}").ok
        emu.faults.error_rate = 1.0
        for _ in range(6):
            assert http.get(f"{emu.api_url}/projects").status_code in (500, 503)
    assert checker.checked["GetProjects"] >= 1  # the 500s are service-shaped and checked
    assert urlsplit(emu.api_url).path == "/customvision/v3.3/training"


def test_spec_readme_names_provenance() -> None:
    text = (SPEC_DIR / "README.md").read_text(encoding="utf-8")
    assert "Azure/azure-rest-api-specs" in text and "MIT" in text
    assert Path(SPEC_DIR / "training-v3.3.json").is_file()
