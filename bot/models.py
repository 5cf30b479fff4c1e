"""Frozen dataclasses for the Training API v3.3 definitions the bot reads. Pure.

`Model.from_dict(data)` checks one JSON object against its spec definition and returns a frozen
value with typed snake_case fields; `to_dict()` returns the object exactly as received, unknown
fields included (the service adds fields over time, and an export must not drop any).

Rules, applied to every model:
- Required: the spec's own `required` list, plus `id` on every model that has one (the bot acts
  on ids; a record without one cannot be exported or erased, so it is treated as malformed).
  Everything else may be absent or null: the service omits fields it does not use.
- Types are checked as the spec states them (string, integer, number, boolean, array, object;
  `format: uuid` fields must hold a GUID). A wrong type raises MalformedResponse naming the
  field's path (`Image.tags[2].tagId`), never its value.
- Enumerations are not checked: the spec marks them `modelAsString`, so new values are allowed.
- Datetimes stay ISO-8601 strings as received (parsing would lose the service's exact form).
- Arrays become tuples (empty when absent or null); string maps become read-only mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Self, TypeVar

from bot.errors import MalformedResponse
from bot.ids import is_guid, normalize_guid

__all__ = [
    "BoundingBox",
    "Domain",
    "Export",
    "Image",
    "ImageProcessingSettings",
    "ImageRegion",
    "ImageTag",
    "Iteration",
    "IterationPerformance",
    "Model",
    "Prediction",
    "PredictionQueryResult",
    "PredictionQueryTag",
    "PredictionQueryToken",
    "Project",
    "ProjectSettings",
    "StoredImagePrediction",
    "Tag",
    "TagPerformance",
    "copy_json",
    "parse_list",
]

M = TypeVar("M", bound="Model")


def copy_json(value: Any) -> Any:
    """Return a deep copy of a JSON value (dicts, lists, scalars); faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def _kind(value: object) -> str:
    """The JSON name of a value's type, for messages (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _malformed(path: str, problem: str) -> MalformedResponse:
    return MalformedResponse(f"{path}: {problem}")


class _Reader:
    """Reads typed fields from one JSON object at `path`; any problem is a MalformedResponse."""

    __slots__ = ("data", "path")

    def __init__(self, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise _malformed(path, f"expected an object, got {_kind(data)}")
        self.path = path
        self.data: dict[str, Any] = data

    def _value(self, key: str, *, required: bool) -> Any:
        if key not in self.data:
            if required:
                raise _malformed(f"{self.path}.{key}", "required field is missing")
            return None
        return self.data[key]

    def _wrong(self, key: str, expected: str, value: object) -> MalformedResponse:
        return _malformed(f"{self.path}.{key}", f"expected {expected}, got {_kind(value)}")

    def opt_text(self, key: str, *, required: bool = False) -> str | None:
        value = self._value(key, required=required)
        if value is None or isinstance(value, str):
            return value
        raise self._wrong(key, "a string", value)

    def text(self, key: str) -> str:
        value = self.opt_text(key, required=True)
        if value is None:
            raise self._wrong(key, "a string", value)
        return value

    def opt_guid(self, key: str) -> str | None:
        value = self.opt_text(key)
        if value is None:
            return None
        if not is_guid(value):
            raise _malformed(f"{self.path}.{key}", "expected a GUID")
        return normalize_guid(value)

    def guid(self, key: str) -> str:
        # GUIDs are case-insensitive and the service may answer in upper case: every id enters
        # the bot in lower case (as the parser stores typed ids), so ids compare with ==.
        value = self.text(key)
        if not is_guid(value):
            raise _malformed(f"{self.path}.{key}", "expected a GUID")
        return normalize_guid(value)

    def opt_bool(self, key: str) -> bool | None:
        value = self._value(key, required=False)
        if value is None or isinstance(value, bool):
            return value
        raise self._wrong(key, "a boolean", value)

    def opt_int(self, key: str) -> int | None:
        value = self._value(key, required=False)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise self._wrong(key, "an integer", value)

    def opt_number(self, key: str, *, required: bool = False) -> float | None:
        value = self._value(key, required=required)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self._wrong(key, "a number", value)

    def number(self, key: str) -> float:
        value = self.opt_number(key, required=True)
        if value is None:
            raise self._wrong(key, "a number", value)
        return value

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._value(key, required=False)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _malformed(f"{self.path}.{key}[{i}]", f"expected a string, got {_kind(item)}")
        return tuple(value)

    def text_map(self, key: str) -> Mapping[str, str]:
        return self._map(key, str, "a string")

    def bool_map(self, key: str) -> Mapping[str, bool]:
        return self._map(key, bool, "a boolean")

    def _map(self, key: str, kind: type[Any], expected: str) -> Mapping[str, Any]:
        value = self._value(key, required=False)
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        for k, v in value.items():
            if not isinstance(v, kind):
                raise _malformed(f"{self.path}.{key}.{k}", f"expected {expected}, got {_kind(v)}")
        return MappingProxyType(dict(value))

    def opt_model(self, key: str, cls: type[M], *, required: bool = False) -> M | None:
        value = self._value(key, required=required)
        if value is None:
            if required:
                raise self._wrong(key, "an object", value)
            return None
        return cls._parse(f"{self.path}.{key}", value, owned=True)

    def model(self, key: str, cls: type[M]) -> M:
        parsed = self.opt_model(key, cls, required=True)
        assert parsed is not None  # opt_model raises for a required null
        return parsed

    def models(self, key: str, cls: type[M]) -> tuple[M, ...]:
        value = self._value(key, required=False)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        return tuple(
            cls._parse(f"{self.path}.{key}[{i}]", item, owned=True) for i, item in enumerate(value)
        )


@dataclass(frozen=True, kw_only=True)
class Model:
    """Base of every model: keeps the JSON object as received (`raw`, read it via to_dict())."""

    raw: Mapping[str, Any] = field(repr=False, hash=False)

    @classmethod
    def from_dict(cls, data: object, *, copy: bool = True) -> Self:
        """Return the model for a JSON object; raise MalformedResponse for missing/wrong fields.

        copy=False: the model keeps `data` itself (a caller that parsed it for this alone and
        never changes it saves the copy).
        """
        return cls._parse(cls.__name__, data, owned=not copy)

    @classmethod
    def _parse(cls, path: str, data: object, *, owned: bool = False) -> Self:
        # The reader reads the model's own copy; nested models (owned) keep their part of it,
        # which nothing changes, instead of copying it again.
        reader = _Reader(path, data)
        if not owned:
            reader.data = copy_json(reader.data)
        return cls(raw=reader.data, **cls._fields(reader))

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object exactly as received (a copy), unknown fields included."""
        result: dict[str, Any] = copy_json(self.raw)
        return result


def parse_list(cls: type[M], data: object) -> list[M]:
    """Return the models for a JSON array; raise MalformedResponse when it is not one."""
    if not isinstance(data, list):
        raise _malformed(f"{cls.__name__}[]", f"expected an array, got {_kind(data)}")
    return [cls._parse(f"{cls.__name__}[{i}]", item) for i, item in enumerate(data)]


@dataclass(frozen=True, kw_only=True)
class Domain(Model):
    """A domain (the base model a project trains on)."""

    id: str
    name: str | None
    type: str | None
    exportable: bool | None
    enabled: bool | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "name": r.opt_text("name"),
            "type": r.opt_text("type"),
            "exportable": r.opt_bool("exportable"),
            "enabled": r.opt_bool("enabled"),
        }


@dataclass(frozen=True, kw_only=True)
class ImageProcessingSettings(Model):
    """Image preprocessing settings of a project."""

    augmentation_methods: Mapping[str, bool] = field(hash=False)

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {"augmentation_methods": r.bool_map("augmentationMethods")}


@dataclass(frozen=True, kw_only=True)
class ProjectSettings(Model):
    """A project's settings."""

    domain_id: str | None
    classification_type: str | None
    target_export_platforms: tuple[str, ...]
    use_negative_set: bool | None
    detection_parameters: str | None
    image_processing_settings: ImageProcessingSettings | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "domain_id": r.opt_guid("domainId"),
            "classification_type": r.opt_text("classificationType"),
            "target_export_platforms": r.text_list("targetExportPlatforms"),
            "use_negative_set": r.opt_bool("useNegativeSet"),
            "detection_parameters": r.opt_text("detectionParameters"),
            "image_processing_settings": r.opt_model(
                "imageProcessingSettings", ImageProcessingSettings
            ),
        }


@dataclass(frozen=True, kw_only=True)
class Project(Model):
    """A project."""

    id: str
    name: str
    description: str | None
    settings: ProjectSettings
    created: str | None
    last_modified: str | None
    thumbnail_uri: str | None
    dr_mode_enabled: bool | None
    status: str | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "name": r.text("name"),
            # Required by the spec but nullable: present, possibly null.
            "description": r.opt_text("description", required=True),
            "settings": r.model("settings", ProjectSettings),
            "created": r.opt_text("created"),
            "last_modified": r.opt_text("lastModified"),
            "thumbnail_uri": r.opt_text("thumbnailUri"),
            "dr_mode_enabled": r.opt_bool("drModeEnabled"),
            "status": r.opt_text("status"),
        }


@dataclass(frozen=True, kw_only=True)
class Iteration(Model):
    """A trained (or training) iteration of a project."""

    id: str
    name: str
    status: str | None
    created: str | None
    last_modified: str | None
    trained_at: str | None
    project_id: str | None
    exportable: bool | None
    exportable_to: tuple[str, ...]
    domain_id: str | None
    classification_type: str | None
    training_type: str | None
    reserved_budget_in_hours: int | None
    training_time_in_minutes: int | None
    publish_name: str | None
    original_publish_resource_id: str | None

    @property
    def is_published(self) -> bool:
        """True when the iteration is published (its publishName is non-empty)."""
        return bool(self.publish_name)

    @property
    def is_trained(self) -> bool:
        """True when training completed: only then is there a snapshot, performance, exports."""
        return self.status is None or self.status.lower() == "completed"

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "name": r.text("name"),
            "status": r.opt_text("status"),
            "created": r.opt_text("created"),
            "last_modified": r.opt_text("lastModified"),
            "trained_at": r.opt_text("trainedAt"),
            "project_id": r.opt_guid("projectId"),
            "exportable": r.opt_bool("exportable"),
            "exportable_to": r.text_list("exportableTo"),
            "domain_id": r.opt_guid("domainId"),
            "classification_type": r.opt_text("classificationType"),
            "training_type": r.opt_text("trainingType"),
            "reserved_budget_in_hours": r.opt_int("reservedBudgetInHours"),
            "training_time_in_minutes": r.opt_int("trainingTimeInMinutes"),
            "publish_name": r.opt_text("publishName"),
            "original_publish_resource_id": r.opt_text("originalPublishResourceId"),
        }


@dataclass(frozen=True, kw_only=True)
class TagPerformance(Model):
    """Performance of one tag in a trained iteration."""

    id: str
    name: str | None
    precision: float | None
    precision_std_deviation: float | None
    recall: float | None
    recall_std_deviation: float | None
    average_precision: float | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "name": r.opt_text("name"),
            "precision": r.opt_number("precision"),
            "precision_std_deviation": r.opt_number("precisionStdDeviation"),
            "recall": r.opt_number("recall"),
            "recall_std_deviation": r.opt_number("recallStdDeviation"),
            "average_precision": r.opt_number("averagePrecision"),
        }


@dataclass(frozen=True, kw_only=True)
class IterationPerformance(Model):
    """Performance of a trained iteration, overall and per tag."""

    per_tag_performance: tuple[TagPerformance, ...]
    precision: float | None
    precision_std_deviation: float | None
    recall: float | None
    recall_std_deviation: float | None
    average_precision: float | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "per_tag_performance": r.models("perTagPerformance", TagPerformance),
            "precision": r.opt_number("precision"),
            "precision_std_deviation": r.opt_number("precisionStdDeviation"),
            "recall": r.opt_number("recall"),
            "recall_std_deviation": r.opt_number("recallStdDeviation"),
            "average_precision": r.opt_number("averagePrecision"),
        }


@dataclass(frozen=True, kw_only=True)
class Export(Model):
    """An exported model of an iteration (no id in the spec: platform + flavor name it)."""

    platform: str | None
    status: str | None
    download_uri: str | None
    flavor: str | None
    newer_version_available: bool | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "platform": r.opt_text("platform"),
            "status": r.opt_text("status"),
            "download_uri": r.opt_text("downloadUri"),
            "flavor": r.opt_text("flavor"),
            "newer_version_available": r.opt_bool("newerVersionAvailable"),
        }


@dataclass(frozen=True, kw_only=True)
class Tag(Model):
    """A tag of a project (or of an iteration's snapshot)."""

    id: str
    name: str
    description: str | None
    type: str
    image_count: int | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "name": r.text("name"),
            # Required by the spec but nullable: present, possibly null.
            "description": r.opt_text("description", required=True),
            "type": r.text("type"),
            "image_count": r.opt_int("imageCount"),
        }


@dataclass(frozen=True, kw_only=True)
class ImageTag(Model):
    """A tag attached to an image."""

    tag_id: str | None
    tag_name: str | None
    created: str | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "tag_id": r.opt_guid("tagId"),
            "tag_name": r.opt_text("tagName"),
            "created": r.opt_text("created"),
        }


@dataclass(frozen=True, kw_only=True)
class ImageRegion(Model):
    """A tagged region of an image (object detection)."""

    region_id: str | None
    tag_name: str | None
    created: str | None
    tag_id: str
    left: float
    top: float
    width: float
    height: float

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "region_id": r.opt_guid("regionId"),
            "tag_name": r.opt_text("tagName"),
            "created": r.opt_text("created"),
            "tag_id": r.guid("tagId"),
            "left": r.number("left"),
            "top": r.number("top"),
            "width": r.number("width"),
            "height": r.number("height"),
        }


@dataclass(frozen=True, kw_only=True)
class Image(Model):
    """A training image with its tags, regions and metadata."""

    id: str
    created: str | None
    width: int | None
    height: int | None
    resized_image_uri: str | None
    thumbnail_uri: str | None
    original_image_uri: str | None
    tags: tuple[ImageTag, ...]
    regions: tuple[ImageRegion, ...]
    metadata: Mapping[str, str] = field(hash=False)

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "created": r.opt_text("created"),
            "width": r.opt_int("width"),
            "height": r.opt_int("height"),
            "resized_image_uri": r.opt_text("resizedImageUri"),
            "thumbnail_uri": r.opt_text("thumbnailUri"),
            "original_image_uri": r.opt_text("originalImageUri"),
            "tags": r.models("tags", ImageTag),
            "regions": r.models("regions", ImageRegion),
            "metadata": r.text_map("metadata"),
        }


@dataclass(frozen=True, kw_only=True)
class BoundingBox(Model):
    """A region of an image, in fractions of its width and height."""

    left: float
    top: float
    width: float
    height: float

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "left": r.number("left"),
            "top": r.number("top"),
            "width": r.number("width"),
            "height": r.number("height"),
        }


@dataclass(frozen=True, kw_only=True)
class Prediction(Model):
    """One tag's probability in a prediction."""

    probability: float | None
    tag_id: str | None
    tag_name: str | None
    bounding_box: BoundingBox | None
    tag_type: str | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "probability": r.opt_number("probability"),
            "tag_id": r.opt_guid("tagId"),
            "tag_name": r.opt_text("tagName"),
            "bounding_box": r.opt_model("boundingBox", BoundingBox),
            "tag_type": r.opt_text("tagType"),
        }


@dataclass(frozen=True, kw_only=True)
class StoredImagePrediction(Model):
    """A prediction the service stored (with its image) when the endpoint was called."""

    id: str
    resized_image_uri: str | None
    thumbnail_uri: str | None
    original_image_uri: str | None
    domain: str | None
    project: str | None
    iteration: str | None
    created: str | None
    predictions: tuple[Prediction, ...]

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "id": r.guid("id"),
            "resized_image_uri": r.opt_text("resizedImageUri"),
            "thumbnail_uri": r.opt_text("thumbnailUri"),
            "original_image_uri": r.opt_text("originalImageUri"),
            "domain": r.opt_guid("domain"),
            "project": r.opt_guid("project"),
            "iteration": r.opt_guid("iteration"),
            "created": r.opt_text("created"),
            "predictions": r.models("predictions", Prediction),
        }


@dataclass(frozen=True, kw_only=True)
class PredictionQueryTag(Model):
    """A tag filter of a prediction query."""

    id: str | None
    min_threshold: float | None
    max_threshold: float | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        # The id is the filter's tag, not a record id: optional, as in the spec.
        return {
            "id": r.opt_guid("id"),
            "min_threshold": r.opt_number("minThreshold"),
            "max_threshold": r.opt_number("maxThreshold"),
        }


@dataclass(frozen=True, kw_only=True)
class PredictionQueryToken(Model):
    """The paging token of QueryPredictions: send it back to get the next page."""

    session: str | None
    continuation: str | None
    max_count: int | None
    order_by: str | None
    tags: tuple[PredictionQueryTag, ...]
    iteration_id: str | None
    start_time: str | None
    end_time: str | None
    application: str | None

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "session": r.opt_text("session"),
            "continuation": r.opt_text("continuation"),
            "max_count": r.opt_int("maxCount"),
            "order_by": r.opt_text("orderBy"),
            "tags": r.models("tags", PredictionQueryTag),
            "iteration_id": r.opt_guid("iterationId"),
            "start_time": r.opt_text("startTime"),
            "end_time": r.opt_text("endTime"),
            "application": r.opt_text("application"),
        }


@dataclass(frozen=True, kw_only=True)
class PredictionQueryResult(Model):
    """One page of stored predictions and the token for the next page."""

    token: PredictionQueryToken | None
    results: tuple[StoredImagePrediction, ...]

    @property
    def has_more(self) -> bool:
        """True when the token carries a continuation (another page may follow)."""
        return self.token is not None and bool(self.token.continuation)

    @classmethod
    def _fields(cls, r: _Reader) -> dict[str, Any]:
        return {
            "token": r.opt_model("token", PredictionQueryToken),
            "results": r.models("results", StoredImagePrediction),
        }
