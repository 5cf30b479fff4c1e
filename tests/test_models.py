"""bot.models against the spec: its definitions, its x-ms-examples, and malformed bodies."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot import models
from bot.errors import MalformedResponse
from bot.models import (
    Domain,
    Export,
    Image,
    ImageRegion,
    Iteration,
    IterationPerformance,
    Model,
    Prediction,
    PredictionQueryResult,
    Project,
    StoredImagePrediction,
    Tag,
    TagPerformance,
    parse_list,
)

SPECS = Path(__file__).parent / "spec"  # the project's copy of the spec and its examples
SPEC = json.loads((SPECS / "training-v3.3.json").read_text(encoding="utf-8"))
EXAMPLES = SPECS / "examples-v3.3"

# operationId -> (model, is_list) for every example whose 200 body is a model.
EXAMPLE_MODELS: dict[str, tuple[type[Model], bool]] = {
    "GetDomains": (Domain, True),
    "GetProjects": (Project, True),
    "GetProject": (Project, False),
    "GetIterations": (Iteration, True),
    "GetIteration": (Iteration, False),
    "GetIterationPerformance": (IterationPerformance, False),
    "GetExports": (Export, True),
    "ExportIteration": (Export, False),
    "GetTags": (Tag, True),
    "GetTag": (Tag, False),
    "GetImages": (Image, True),
    "GetTaggedImages": (Image, True),
    "GetUntaggedImages": (Image, True),
    "GetImagesByIds": (Image, True),
    "QueryPredictions": (PredictionQueryResult, False),
}

MODEL_CLASSES = [
    obj
    for obj in vars(models).values()
    if isinstance(obj, type) and issubclass(obj, Model) and obj is not Model
]


def example_body(operation: str) -> Any:
    data = json.loads((EXAMPLES / f"{operation}.json").read_text(encoding="utf-8"))
    return data["responses"]["200"]["body"]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def spec_fields(cls: type[Model]) -> set[str]:
    return {snake(p) for p in SPEC["definitions"][cls.__name__]["properties"]}


def model_fields(cls: type[Model]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"raw"}


@pytest.mark.parametrize("operation", sorted(EXAMPLE_MODELS))
def test_models_parse_spec_examples_and_round_trip_exactly(operation: str) -> None:
    cls, is_list = EXAMPLE_MODELS[operation]
    body = example_body(operation)
    if is_list:
        parsed = parse_list(cls, body)
        assert [m.to_dict() for m in parsed] == body
        assert len(parsed) == len(body)
    else:
        assert cls.from_dict(body).to_dict() == body


def test_models_cover_every_example_with_a_model_body() -> None:
    operations = {p.stem for p in EXAMPLES.glob("*.json")}
    with_object_bodies = {
        op
        for op in operations
        if isinstance(
            json.loads((EXAMPLES / f"{op}.json").read_text(encoding="utf-8"))["responses"]
            .get("200", {})
            .get("body"),
            dict | list,
        )
    }
    # ExportProject's body is a ProjectExport token: the bot never reads it.
    assert with_object_bodies - {"ExportProject"} == set(EXAMPLE_MODELS)


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_models_mirror_every_property_of_their_spec_definition(cls: type[Model]) -> None:
    assert cls.__name__ in SPEC["definitions"]
    assert model_fields(cls) == spec_fields(cls)


def test_models_iteration_fields_are_typed_from_the_example() -> None:
    iteration = Iteration.from_dict(example_body("GetIteration"))
    assert iteration == Iteration(
        raw=example_body("GetIteration"),
        id="e31a14ab-5d78-4f7b-a267-3a1e4fd8a758",
        name="Iteration 2",
        status="Completed",
        created="2017-12-18T22:40:36Z",
        last_modified="2017-12-19T15:47:02Z",
        trained_at="2017-12-19T15:47:02Z",
        project_id="64b822c5-8082-4b36-a426-27225f4aa18c",
        exportable=False,
        exportable_to=("ONNX", "DockerFile", "TensorFlow", "CoreML"),
        domain_id="ee85a74c-405e-4adc-bb47-ffa8ca0c9f31",
        classification_type=None,
        training_type="Regular",
        reserved_budget_in_hours=0,
        training_time_in_minutes=None,
        publish_name="",
        original_publish_resource_id=None,
    )
    assert not iteration.is_published
    published = parse_list(Iteration, example_body("GetIterations"))[1]
    assert published.is_published and published.publish_name == "model1"


def test_models_nested_values_are_typed() -> None:
    images = parse_list(Image, example_body("GetImages"))
    assert images[0].tags[0].tag_id == "b607964f-7bd6-4a3b-a869-6791fb6aab87"
    assert images[0].tags[0].tag_name == "tag 1"
    assert images[0].regions == ()
    assert dict(images[0].metadata) == {}
    assert (images[0].width, images[0].height) == (1095, 900)

    project = Project.from_dict(example_body("GetProject"))
    assert project.settings.domain_id == "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
    assert project.settings.target_export_platforms == ()

    result = PredictionQueryResult.from_dict(example_body("QueryPredictions"))
    assert result.token is not None and result.token.session == "1:286613"
    assert not result.has_more
    stored = result.results[0]
    assert stored.id == "dfd2d346-3ed5-4e1e-857d-af4e32cec042"
    assert [p.probability for p in stored.predictions] == [1.0, 3.60627153e-12]
    assert result.token.tags[0].min_threshold == 0.9

    performance = IterationPerformance.from_dict(example_body("GetIterationPerformance"))
    assert [t.name for t in performance.per_tag_performance] == ["Hemlock", "Japanese Cherry"]
    assert performance.average_precision is None


def test_models_keep_unknown_fields_and_nulls_in_to_dict() -> None:
    body: dict[str, Any] = {
        "id": "4d6eb844-42ee-42bc-bd6f-c32455ef07c9",
        "width": 10,
        "tags": None,
        "regions": [
            {
                "regionId": "5d6eb844-42ee-42bc-bd6f-c32455ef07c9",
                "tagId": "b607964f-7bd6-4a3b-a869-6791fb6aab87",
                "left": 0,
                "top": 0.5,
                "width": 0.25,
                "height": 1,
                "futureRegionField": {"nested": [1, 2]},
            }
        ],
        "metadata": {"subject": "s-17"},
        "futureField": ["kept", {"as": "is"}],
    }
    image = Image.from_dict(body)
    assert image.to_dict() == body
    assert image.tags == ()
    assert image.regions[0].to_dict() == body["regions"][0]
    assert image.regions[0].left == 0.0 and isinstance(image.regions[0].left, float)
    assert dict(image.metadata) == {"subject": "s-17"}


def test_models_to_dict_is_a_copy_and_models_are_frozen() -> None:
    body = example_body("GetTag")
    tag = Tag.from_dict(body)
    body["name"] = "changed after parsing"
    copy = tag.to_dict()
    copy["name"] = "changed in the copy"
    assert tag.to_dict()["name"] == "Tag1"
    assert tag.name == "Tag1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tag.name = "x"  # type: ignore[misc]  # the assignment under test: refused
    assert hash(tag) == hash(Tag.from_dict(example_body("GetTag")))
    assert "raw" not in repr(tag)


GUID = "9e27bc1b-7ae7-4e3b-a4e5-36153479dc01"
TAG = {"id": GUID, "name": "n", "description": None, "type": "Regular"}
PROJECT = {"id": GUID, "name": "p", "description": "", "settings": {}}


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (Tag, [], "Tag: expected an object, got an array"),
        (Tag, "<html>", "Tag: expected an object, got a string"),
        (Tag, {**TAG, "id": None}, "Tag.id: expected a string, got null"),
        (Tag, {k: v for k, v in TAG.items() if k != "id"}, "Tag.id: required field is missing"),
        (Tag, {**TAG, "id": "not-a-guid"}, "Tag.id: expected a GUID"),
        (
            Tag,
            {k: v for k, v in TAG.items() if k != "description"},
            "Tag.description: required field is missing",
        ),
        (Tag, {**TAG, "type": 3}, "Tag.type: expected a string, got a number"),
        (Tag, {**TAG, "imageCount": "3"}, "Tag.imageCount: expected an integer, got a string"),
        (Tag, {**TAG, "imageCount": True}, "Tag.imageCount: expected an integer, got a boolean"),
        (Tag, {**TAG, "imageCount": 1.5}, "Tag.imageCount: expected an integer, got a number"),
        (
            Project,
            {k: v for k, v in PROJECT.items() if k != "settings"},
            "Project.settings: required field is missing",
        ),
        (Project, {**PROJECT, "settings": None}, "Project.settings: expected an object, got null"),
        (
            Project,
            {**PROJECT, "settings": {"targetExportPlatforms": ["ONNX", 1]}},
            "Project.settings.targetExportPlatforms[1]: expected a string, got a number",
        ),
        (
            Project,
            {**PROJECT, "settings": {"imageProcessingSettings": {"augmentationMethods": {"a": 1}}}},
            "Project.settings.imageProcessingSettings.augmentationMethods.a: "
            "expected a boolean, got a number",
        ),
        (
            Domain,
            {"id": GUID, "enabled": "yes"},
            "Domain.enabled: expected a boolean, got a string",
        ),
        (
            Image,
            {"id": GUID, "tags": [{"tagId": GUID}, {"tagId": 7}]},
            "Image.tags[1].tagId: expected a string, got a number",
        ),
        (Image, {"id": GUID, "tags": {}}, "Image.tags: expected an array, got an object"),
        (
            Image,
            {"id": GUID, "metadata": {"k": 1}},
            "Image.metadata.k: expected a string, got a number",
        ),
        (
            Image,
            {"id": GUID, "regions": [{"tagId": GUID, "left": 0, "top": 0, "width": 1}]},
            "Image.regions[0].height: required field is missing",
        ),
        (
            ImageRegion,
            {"tagId": GUID, "left": True, "top": 0, "width": 1, "height": 1},
            "ImageRegion.left: expected a number, got a boolean",
        ),
        (
            IterationPerformance,
            {"perTagPerformance": [{"name": "x"}]},
            "IterationPerformance.perTagPerformance[0].id: required field is missing",
        ),
        (
            TagPerformance,
            {"id": GUID, "recall": "1"},
            "TagPerformance.recall: expected a number, got a string",
        ),
        (
            StoredImagePrediction,
            {"id": GUID, "predictions": [{"boundingBox": {"left": 0}}]},
            "StoredImagePrediction.predictions[0].boundingBox.top: required field is missing",
        ),
        (Prediction, {"tagId": "x"}, "Prediction.tagId: expected a GUID"),
        (
            PredictionQueryResult,
            {"token": {"maxCount": "5"}},
            "PredictionQueryResult.token.maxCount: expected an integer, got a string",
        ),
        (Iteration, {"id": GUID}, "Iteration.name: required field is missing"),
    ],
)
def test_models_from_dict_rejects_malformed_objects(
    cls: type[Model], data: Any, message: str
) -> None:
    with pytest.raises(MalformedResponse) as caught:
        cls.from_dict(data)
    assert caught.value.user_message == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": GUID}, "Tag[]: expected an array, got an object"),
        ([TAG, {**TAG, "name": None}], "Tag[1].name: expected a string, got null"),
    ],
)
def test_models_parse_list_rejects_malformed_lists(data: Any, message: str) -> None:
    with pytest.raises(MalformedResponse) as caught:
        parse_list(Tag, data)
    assert caught.value.user_message == message


def test_models_error_messages_never_quote_values() -> None:
    secret_looking = "personal-data-value-123"
    with pytest.raises(MalformedResponse) as caught:
        Tag.from_dict({**TAG, "imageCount": secret_looking})
    assert secret_looking not in str(caught.value)


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_models_require_the_spec_required_fields_and_id(cls: type[Model]) -> None:
    definition = SPEC["definitions"][cls.__name__]
    required = set(definition.get("required", []))
    if "id" in definition["properties"] and cls.__name__ != "PredictionQueryTag":
        required.add("id")
    for name in sorted(required):
        full = _minimal(cls)
        del full[name]
        with pytest.raises(MalformedResponse, match=f"{cls.__name__}.{name}: required"):
            cls.from_dict(full)
    assert cls.from_dict(_minimal(cls)).to_dict() == _minimal(cls)


def _minimal(cls: type[Model]) -> dict[str, Any]:
    """A smallest valid object: the required fields (and id) only."""
    values: dict[str, Any] = {
        "id": GUID,
        "name": "n",
        "description": None,
        "settings": {},
        "type": "Regular",
        "tagId": GUID,
        "left": 0.1,
        "top": 0.2,
        "width": 0.3,
        "height": 0.4,
    }
    definition = SPEC["definitions"][cls.__name__]
    keys = set(definition.get("required", []))
    if "id" in definition["properties"] and cls.__name__ != "PredictionQueryTag":
        keys.add("id")
    return {k: values[k] for k in keys}
