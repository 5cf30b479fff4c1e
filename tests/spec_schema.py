"""Check requests and JSON bodies against the Training API v3.3 spec (tests/spec/, a verbatim copy).

Used by the emulator's conformance tests and by the client's tests:

    validate_response("GetImages", 200, body)            # raises SpecViolation
    op = operation_for("GET", "/customvision/v3.3/training/projects/<id>/images?take=10")
    op.validate_request({"take": "10"})                  # raises SpecViolation

Swagger 2.0 schemas become JSON Schema (draft 4) as follows:
- `#/definitions/X` references resolve inside the spec; `x-nullable: true` admits null
  (otherwise null is refused, including for a `$ref`);
- formats are checked: uuid (8-4-4-4-12 hex), date-time (RFC 3339), int32 range;
- enums marked `x-ms-enum.modelAsString` (extensible) are only enforced with `strict=True`;
- `strict=True` also refuses properties the definition does not declare, which is what the
  emulator must meet (a typo in a field name is a defect there; the real service may add
  fields, so clients validate without it).
Request checks follow the operation's parameters: required ones present, no unknown query
parameters, csv arrays (`a,b,c`) within maxItems with GUID items, lowercase booleans,
integers within minimum/maximum, enum values, and a body valid against its schema.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft4Validator, FormatChecker

__all__ = [
    "BASE_PATH",
    "EXAMPLES_DIR",
    "SPEC_PATH",
    "OperationSpec",
    "ParameterSpec",
    "SpecChecker",
    "SpecViolation",
    "example",
    "operation",
    "operation_for",
    "operations",
    "read_manifest",
    "response_schema",
    "shared_spec_dir",
    "spec",
    "spec_copy_problems",
    "validate_response",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = Path(__file__).resolve().parent / "spec"
SPEC_PATH = SPEC_DIR / "training-v3.3.json"
EXAMPLES_DIR = SPEC_DIR / "examples-v3.3"
# The sha256 of every file of the copy, taken from the shared original (`sha256sum` format, so
# `cd tests/spec && sha256sum -c SHA256SUMS` checks it too).
MANIFEST_PATH = SPEC_DIR / "SHA256SUMS"
BASE_PATH = "/customvision/v3.3/training"

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DROPPED_KEYS = {"description", "readOnly", "example", "x-nullable", "x-ms-enum", "title"}


class SpecViolation(AssertionError):
    """A request or response that the spec does not allow; the message lists every problem."""


def shared_spec_dir() -> Path | None:
    """Return ../shared/specs/custom-vision-training beside the repo, or None when absent."""
    candidate = REPO_ROOT.parent / "shared" / "specs" / "custom-vision-training"
    return candidate if (candidate / "training-v3.3.json").is_file() else None


@functools.cache
def spec() -> dict[str, Any]:
    """Return the parsed spec (tests/spec/training-v3.3.json)."""
    with SPEC_PATH.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


def example(operation_id: str) -> dict[str, Any] | None:
    """Return the x-ms-examples file of an operation (tests/spec/examples-v3.3/), or None."""
    path = EXAMPLES_DIR / f"{operation_id}.json"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


# ------------------------------------------------------------------ conversion


def _convert(node: Any, strict: bool) -> Any:
    """One Swagger 2.0 schema node as JSON Schema draft 4 (see the module docstring)."""
    if not isinstance(node, dict):
        return node
    nullable = node.get("x-nullable") is True
    if "$ref" in node:
        ref = {"$ref": node["$ref"]}
        return {"anyOf": [ref, {"type": "null"}]} if nullable else ref
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, strict)
        else:
            out[key] = value
    extensible = isinstance(node.get("x-ms-enum"), dict) and node["x-ms-enum"].get("modelAsString")
    if "enum" in out and extensible and not strict:
        del out["enum"]
    if strict and out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if nullable:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("uuid")
    def is_uuid(value: object) -> bool:
        return not isinstance(value, str) or bool(_GUID.match(value))

    @checker.checks("date-time")
    def is_date_time(value: object) -> bool:
        return not isinstance(value, str) or bool(_DATE_TIME.match(value))

    @checker.checks("int32")
    def is_int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    return checker


_FORMATS = _format_checker()


@functools.cache
def _definitions(strict: bool) -> dict[str, Any]:
    return {name: _convert(d, strict) for name, d in spec()["definitions"].items()}


@functools.cache
def _validator(schema_json: str, strict: bool) -> Draft4Validator:
    root = dict(json.loads(schema_json))
    root["definitions"] = _definitions(strict)
    return Draft4Validator(root, format_checker=_FORMATS)


def _problems(schema: dict[str, Any], value: Any, strict: bool) -> list[str]:
    converted = _convert(schema, strict)
    validator = _validator(json.dumps(converted, sort_keys=True), strict)
    found = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        found.append(f"body{where}: {error.message}")
    return found


# ------------------------------------------------------------------ operations


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of an operation, as the spec declares it."""

    name: str
    location: str  # path | query | body | header | formData
    required: bool
    type: str | None = None
    format: str | None = None
    enum: tuple[str, ...] | None = None
    collection_format: str | None = None
    items_type: str | None = None
    items_format: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_items: int | None = None
    max_items: int | None = None
    schema: dict[str, Any] | None = None

    @classmethod
    def from_spec(cls, raw: dict[str, Any]) -> ParameterSpec:
        """Build from a spec parameter object ($ref to #/parameters resolved)."""
        if "$ref" in raw:
            raw = spec()["parameters"][raw["$ref"].rsplit("/", 1)[-1]]
        items = raw.get("items") or {}
        return cls(
            name=raw["name"],
            location=raw["in"],
            required=bool(raw.get("required", False)),
            type=raw.get("type"),
            format=raw.get("format"),
            enum=tuple(raw["enum"]) if "enum" in raw else None,
            collection_format=raw.get("collectionFormat"),
            items_type=items.get("type"),
            items_format=items.get("format"),
            minimum=raw.get("minimum"),
            maximum=raw.get("maximum"),
            min_items=raw.get("minItems"),
            max_items=raw.get("maxItems"),
            schema=raw.get("schema"),
        )

    def problems(self, value: str) -> list[str]:
        """Return what is wrong with `value` as this parameter's wire text ([] when fine)."""
        if self.type == "array":
            if self.collection_format not in (None, "csv"):
                return [f"{self.name}: collectionFormat {self.collection_format} not handled"]
            items = value.split(",") if value != "" else []
            found = []
            if self.max_items is not None and len(items) > self.max_items:
                found.append(f"{self.name}: {len(items)} items, at most {self.max_items}")
            if self.min_items is not None and len(items) < self.min_items:
                found.append(f"{self.name}: {len(items)} items, at least {self.min_items}")
            for item in items:
                found += self._scalar(item, self.items_type, self.items_format, None)
            return found
        return self._scalar(value, self.type, self.format, self.enum)

    def _scalar(
        self, value: str, kind: str | None, fmt: str | None, enum: tuple[str, ...] | None
    ) -> list[str]:
        name = self.name
        if kind == "boolean":
            return [] if value in ("true", "false") else [f"{name}: {value!r} is not true/false"]
        if kind == "integer":
            if not re.fullmatch(r"-?\d+", value):
                return [f"{name}: {value!r} is not an integer"]
            number = int(value)
            if self.minimum is not None and number < self.minimum:
                return [f"{name}: {number} is below the minimum {self.minimum:g}"]
            if self.maximum is not None and number > self.maximum:
                return [f"{name}: {number} is above the maximum {self.maximum:g}"]
            return []
        if kind == "number":
            try:
                float(value)
            except ValueError:
                return [f"{name}: {value!r} is not a number"]
            return []
        if fmt == "uuid" and not _GUID.match(value):
            return [f"{name}: {value!r} is not a GUID"]
        if enum is not None and value not in enum:
            return [f"{name}: {value!r} is not one of {', '.join(enum)}"]
        return []


@dataclass(frozen=True)
class OperationSpec:
    """One operation of the spec; `path_params` holds the values of a matched concrete path."""

    operation_id: str
    method: str
    path_template: str
    parameters: tuple[ParameterSpec, ...]
    responses: Mapping[str, dict[str, Any] | None]
    path_params: Mapping[str, str] = field(default_factory=dict)

    def parameter(self, name: str) -> ParameterSpec:
        """Return the parameter called `name` (KeyError when the operation has none)."""
        for param in self.parameters:
            if param.name == name:
                return param
        raise KeyError(name)

    def query_parameters(self) -> tuple[ParameterSpec, ...]:
        """Return the query parameters."""
        return tuple(p for p in self.parameters if p.location == "query")

    def request_problems(self, query: Mapping[str, str], body: Any = None) -> list[str]:
        """Return every way the request breaks the spec ([] when it conforms)."""
        found: list[str] = []
        known = {p.name for p in self.query_parameters()}
        found += [f"unknown query parameter {name!r}" for name in query if name not in known]
        for param in self.parameters:
            if param.location == "query":
                value = query.get(param.name)
            elif param.location == "path":
                value = self.path_params.get(param.name)
            elif param.location == "body":
                if body is None:
                    if param.required:
                        found.append(f"{param.name}: the request body is required")
                elif param.schema is not None:
                    found += _problems(param.schema, body, strict=True)
                continue
            else:
                continue
            if value is None:
                if param.required:
                    found.append(f"{param.name}: required {param.location} parameter missing")
                continue
            found += param.problems(value)
        return found

    def validate_request(self, query: Mapping[str, str], body: Any = None) -> None:
        """Raise SpecViolation listing every way the request breaks the spec."""
        found = self.request_problems(query, body)
        if found:
            raise SpecViolation(f"{self.operation_id} request: " + "; ".join(found))


@functools.cache
def operations() -> dict[str, OperationSpec]:
    """Return every operation of the spec by operationId."""
    found = {}
    for template, item in spec()["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            params = tuple(ParameterSpec.from_spec(p) for p in [*shared, *op.get("parameters", [])])
            responses = {
                status: response.get("schema") for status, response in op["responses"].items()
            }
            found[op["operationId"]] = OperationSpec(
                operation_id=op["operationId"],
                method=method.upper(),
                path_template=template,
                parameters=params,
                responses=responses,
            )
    return found


def operation(operation_id: str) -> OperationSpec:
    """Return the operation called `operation_id` (KeyError when the spec has none)."""
    return operations()[operation_id]


@functools.cache
def _templates() -> list[tuple[int, re.Pattern[str], tuple[str, ...], OperationSpec]]:
    found = []
    for op in operations().values():
        names = tuple(re.findall(r"\{(\w+)\}", op.path_template))
        regex = re.escape(op.path_template)
        for name in names:
            regex = regex.replace(re.escape("{" + name + "}"), "([^/]+)")
        literals = sum(1 for s in op.path_template.split("/") if s and not s.startswith("{"))
        found.append((literals, re.compile(f"^{regex}$"), names, op))
    found.sort(key=lambda entry: -entry[0])  # /projects/import before /projects/{projectId}
    return found


def operation_for(method: str, path: str) -> OperationSpec:
    """Return the operation a concrete request path (URL, full or relative path) matches.

    The base path and any query string are ignored. Raises LookupError when no operation
    of the spec matches `method` and `path`.
    """
    path = urlsplit(path).path
    if path.startswith(BASE_PATH):
        path = path[len(BASE_PATH) :]
    for _, pattern, names, op in _templates():
        if op.method != method.upper():
            continue
        match = pattern.match(path)
        if match:
            values = dict(zip(names, match.groups(), strict=True))
            return OperationSpec(
                op.operation_id, op.method, op.path_template, op.parameters, op.responses, values
            )
    raise LookupError(f"no operation of the spec matches {method.upper()} {path}")


def response_schema(operation_id: str, status: int) -> dict[str, Any] | None:
    """Return the spec's schema for that status (or `default`); None when it has no body."""
    responses = operation(operation_id).responses
    key = str(status) if str(status) in responses else "default"
    if key not in responses:
        raise SpecViolation(f"{operation_id}: status {status} is not in the spec")
    return responses[key]


def validate_response(operation_id: str, status: int, body: Any, *, strict: bool = False) -> None:
    """Raise SpecViolation unless `body` is what the spec allows for that status.

    `body` is the parsed JSON value, None for an empty body, bytes for a file response.
    A 2xx status the operation does not declare is a violation (it would fall to `default`,
    the error schema).
    """
    responses = operation(operation_id).responses
    if 200 <= status < 300 and str(status) not in responses:
        raise SpecViolation(f"{operation_id}: status {status} is not in the spec")
    schema = response_schema(operation_id, status)
    if schema is None:
        if body not in (None, b"", ""):
            raise SpecViolation(f"{operation_id} {status}: the spec defines no body")
        return
    if schema.get("type") == "file":
        if not isinstance(body, bytes | bytearray):
            raise SpecViolation(f"{operation_id} {status}: expected file bytes")
        return
    found = _problems(schema, body, strict)
    if found:
        shown = "; ".join(found[:8]) + (f"; ... {len(found) - 8} more" if len(found) > 8 else "")
        raise SpecViolation(f"{operation_id} {status}: {shown}")


class SpecChecker:
    """An emulator hook: checks every service answer (and optionally request) against the spec.

    Gateway and blob answers are not the service's and are not checked here. Collects
    problems instead of raising (it runs on the server's threads); call assert_clean().
    """

    def __init__(self, *, strict: bool = True, check_requests: bool = False) -> None:
        self.strict = strict
        self.check_requests = check_requests
        self.problems: list[str] = []
        self.checked: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, exchange: Any) -> None:
        """Check one exchange (duck-typed: operation_id, method, path, query, bodies...)."""
        if exchange.origin != "service":
            return
        found = []
        try:
            validate_response(
                exchange.operation_id, exchange.status, exchange.response_body, strict=self.strict
            )
        except SpecViolation as violation:
            found.append(str(violation))
        if self.check_requests:
            try:
                operation_for(exchange.method, exchange.path).validate_request(
                    exchange.query, exchange.request_body
                )
            except (SpecViolation, LookupError) as violation:
                found.append(str(violation))
        with self._lock:
            self.checked[exchange.operation_id] += 1
            self.problems.extend(found)

    def assert_clean(self) -> None:
        """Raise SpecViolation listing every problem seen so far."""
        with self._lock:
            problems = list(self.problems)
        if problems:
            raise SpecViolation(f"{len(problems)} spec violation(s):\n" + "\n".join(problems))


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path = MANIFEST_PATH) -> dict[str, str]:
    """Return {path relative to the spec folder: sha256} from a `sha256sum` file.

    Raises ValueError naming the first line that is not `<64 hex digits>  <path>`.
    """
    listed: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found = re.fullmatch(r"([0-9a-f]{64})  (\S+)", line)
        if found is None:
            raise ValueError(f"{path.name} line {number} is not '<sha256>  <path>': {line!r}")
        listed[found[2]] = found[1]
    return listed


def _spec_files(folder: Path) -> dict[str, Path]:
    """Return the spec and its examples in `folder`, keyed by their path relative to it."""
    paths = [folder / SPEC_PATH.name, *sorted((folder / EXAMPLES_DIR.name).glob("*.json"))]
    return {path.relative_to(folder).as_posix(): path for path in paths if path.is_file()}


def spec_copy_problems(
    copy: Path, manifest: Mapping[str, str], original: Path | None = None
) -> list[str]:
    """Return how the spec folder `copy` differs from its manifest and, when given, from the
    `original` folder it was copied from (missing, extra or changed files); empty when intact.
    """
    problems: list[str] = []
    copied = _spec_files(copy)
    problems += [f"{name}: listed in the manifest, missing" for name in manifest.keys() - copied]
    problems += [f"{name}: not in the manifest" for name in copied.keys() - manifest.keys()]
    for name in sorted(copied.keys() & manifest.keys()):
        if sha256_of(copied[name]) != manifest[name]:
            problems.append(f"{name}: differs from the manifest's sha256")
    if original is not None:
        originals = _spec_files(original)
        problems += [f"{name}: not in the original" for name in manifest.keys() - originals]
        problems += [f"{name}: in the original, not copied" for name in originals - manifest.keys()]
        for name in sorted(originals.keys() & manifest.keys()):
            if sha256_of(originals[name]) != manifest[name]:
                problems.append(f"{name}: the original's sha256 differs from the manifest's")
    return sorted(problems)
