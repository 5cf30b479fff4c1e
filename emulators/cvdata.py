"""The Custom Vision emulator's data model: projects, workspace, iterations, tags, predictions.

Pure in the sense that matters here: no I/O and no wall clock. Time enters only as the
`clock` callable (monotonic seconds) that decides when an asynchronous deletion becomes
visible; every timestamp the API shows is derived from the seed.

Layout, chosen so that 100,000 images in one project cost a few megabytes:
- An image is an index (0, 1, 2, ... in creation order) inside its project. Its GUID, size,
  creation time, regions and bytes are derived from (project, index) on demand. The GUID is a
  bijection of the index (a per-project 64-bit prefix plus a permuted 62-bit index), so a GUID
  maps back to its index without any table.
- An image set (the workspace, or one trained iteration's snapshot) is a list indexed by image
  index holding the image's tag bitmask in that set (0 = untagged) or None when absent. Tags
  are numbered per project ("slots"); a tag definition never changes, so an iteration keeps
  naming a tag the workspace has since deleted.
- An image exists (its blobs are served) while any set of its project holds it.
- A listing asked of a set (its indices for a tagging status and tags) is cached as a 4-byte
  array until the set changes. `Seed.full_size()`, the S0 maximum (100,000 images, 20
  trained iterations of 20,000 to 100,000 images each), seeds in about 0.1 s and 20 MB.

Service rules implemented (see /work/shared/NOTES-customvision.md):
- DeleteImages with only imageIds removes from the workspace at once; a 202 delete
  (allIterations / allImages) removes from the workspace and, with allIterations, from every
  iteration's snapshot, each part becoming visible after its own lag (the service works
  asynchronously; the lags are the caller's choice, see emulators.customvision).
- Links carry an expiry (`se`) covered by their signature; blob() refuses them afterwards.
- Exports may be queued ("Exporting", no link) and iterations may be in training; both move
  on by the clock.
- Image metadata belongs to the image (shared by the workspace and the snapshots: inferred).
- Deleting a published iteration, or a project that has one, fails with
  BadRequestIterationIsPublished; the workspace id fails with BadRequestWorkspaceNotDeletable.
- Deleting an iteration drops the images only it used; DeleteTag strips the tag from
  workspace images only (iterations keep their snapshot).
Inferences (undocumented service behaviour) are marked where they are made.
"""

from __future__ import annotations

import array
import base64
import hashlib
import hmac
import io
import json
import math
import re
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bot.pngbytes import png
from emulators.metadatafilter import Expr

__all__ = [
    "DOMAINS",
    "CvError",
    "EmulatorData",
    "LinkExpired",
    "Links",
    "Seed",
    "TagDef",
]

Json = Any
TaggingStatus = Literal["All", "Tagged", "Untagged"]

_MASK64 = (1 << 64) - 1
_MASK62 = (1 << 62) - 1
_HIGH_SCRAMBLE = _MASK64 & ~0xF000  # every bit of the GUID's high half but the version nibble
_NAMESPACE = uuid.UUID("6f1d7c2e-8a43-4c55-9e0b-2f7a1c3d9e10")
_EPOCH = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
_IMAGE_STEP_S = 97
_MAX_CACHED_FILTERS = 6
_EXPORT_PLATFORMS = ("CoreML", "TensorFlow", "DockerFile", "ONNX")
_TAG_WORDS = (
    "cat",
    "dog",
    "bird",
    "fish",
    "horse",
    "cow",
    "sheep",
    "goat",
    "apple",
    "pear",
    "plum",
    "fig",
)

# The eight domains of the spec's GetDomains example, plus the two object detection domains.
DOMAINS: tuple[dict[str, Json], ...] = (
    {"id": "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31", "name": "General", "type": "Classification"},
    {"id": "c151d5b5-dd07-472a-acc8-15d29dea8518", "name": "Food", "type": "Classification"},
    {"id": "ca455789-012d-4b50-9fec-5bb63841c793", "name": "Landmarks", "type": "Classification"},
    {"id": "b30a91ae-e3c1-4f73-a81e-c270bff27c39", "name": "Retail", "type": "Classification"},
    {"id": "45badf75-3591-4f26-a705-45678d3e9f5f", "name": "Adult", "type": "Classification"},
    {
        "id": "0732100f-1a38-4e49-a514-c9b44c697ab5",
        "name": "General (compact)",
        "type": "Classification",
    },
    {
        "id": "b5cfd229-2ac7-4b2b-8d0a-2b0661344894",
        "name": "Landmarks (compact)",
        "type": "Classification",
    },
    {
        "id": "6b4faeda-8396-481b-9f8b-177b9fa3097f",
        "name": "Retail (compact)",
        "type": "Classification",
    },
    {"id": "da2e3a8a-40a5-4171-82f4-58522f70fbc1", "name": "General", "type": "ObjectDetection"},
    {
        "id": "a27d5ca5-bb19-49d8-a70a-fec086c47f5b",
        "name": "General (compact)",
        "type": "ObjectDetection",
    },
)
_COMPACT_CLASSIFICATION = "0732100f-1a38-4e49-a514-c9b44c697ab5"
_COMPACT_DETECTION = "a27d5ca5-bb19-49d8-a70a-fec086c47f5b"
_COMPACT = {_COMPACT_CLASSIFICATION, _COMPACT_DETECTION, "b5cfd229-2ac7-4b2b-8d0a-2b0661344894"}
_COMPACT.add("6b4faeda-8396-481b-9f8b-177b9fa3097f")

_BLOB_IMAGE = re.compile(r"^i-([0-9a-f]{32})/([oit])-([0-9a-f]{32})$")
_BLOB_PREDICTION = re.compile(r"^p-([0-9a-f]{32})/([oit])-([0-9a-f]{32})$")
_BLOB_EXPORT = re.compile(r"^e-([0-9a-f]{32})/([0-9a-f]{32})-([A-Za-z]+)(?:-([A-Za-z0-9]+))?\.zip$")


@dataclass(frozen=True)
class Seed:
    """What the emulator starts with; the same Seed always yields the same GUIDs, names, bytes.

    `images` counts workspace images per project. Projects cycle through Multiclass,
    ObjectDetection and Multilabel. Images were added one after another, some (one in twenty)
    removed from the workspace since, and each iteration trained on the workspace of its day,
    so "images only an iteration uses" exist. Two histories:
    - `smallest_snapshot` 0: the iterations split the images evenly (the n-th of N holds the
      first n/N of them), and only the first keeps the removed ones it had.
    - `smallest_snapshot` S > 0 (with two iterations or more): the project grew from S images at
      its first training to `images` at its last, which trained on today's workspace; an image
      removed from the workspace was removed just after the one training that kept it, so each
      of them is held by exactly one snapshot. `full_size()` is the S0 maximum this way.
    """

    projects: int = 2
    iterations: int = 2
    tags: int = 4
    images: int = 200
    untagged_fraction: float = 0.2
    predictions: int = 10
    image_bytes: int = 2048
    seed: int = 1
    smallest_snapshot: int = 0

    @classmethod
    def full_size(cls, scale: float = 1.0, *, seed: int = 1) -> Seed:
        """Return one project as big as the service allows (S0), its sizes times `scale`.

        At scale 1: 100,000 workspace images (Microsoft's "Limits and quotas": 100,000 images
        per project on S0), 20 trained iterations (the limit) whose snapshots hold from 20,000
        to 100,000 images, about 4,800 images that only a snapshot still holds, 50 tags and
        100 stored predictions. Scaled: the same 20 iterations over fewer images.
        """
        return cls(
            projects=1,
            iterations=20,
            tags=50,
            images=max(40, round(100_000 * scale)),
            predictions=100,
            smallest_snapshot=max(2, round(20_000 * scale)),
            seed=seed,
        )


class CvError(Exception):
    """A service error: HTTP status plus a CustomVisionErrorCodes code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TagDef:
    """A tag as created; never changes (UpdateTag is not emulated)."""

    id: str
    slot: int
    name: str
    description: str | None
    type: str
    created: datetime


class LinkExpired(PermissionError):
    """A correctly signed blob link used after its `se` (storage's 403 AuthenticationFailed)."""

    def __init__(self, expiry: datetime, now: datetime) -> None:
        super().__init__("link expired")
        self.expiry = expiry
        self.now = now


def sas_time(moment: datetime) -> str:
    """A SAS time as storage writes it: whole seconds, UTC, "Z"."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Links:
    """Turns blob paths into what the API shows: absolute signed URLs, or (VNET) relative.

    Every absolute link carries `se` (its expiry), and the signature covers the path and `se`,
    so a link cannot be extended by editing it. The parameters come in the order of the
    recorded responses (`sv, sr, sig, se, sp`: azure-sdk-for-net SessionRecords
    TrainingTests/UpdateImageMetadata.json, where `se` is the listing's Date + 24 h).
    """

    base: str
    vnet: bool
    sign: Callable[[str, str], str]
    expires: datetime

    def uri(self, relpath: str) -> str:
        """Return the URI the API shows for the blob at `relpath`."""
        if self.vnet:
            return relpath
        se = sas_time(self.expires)
        # A SAS signature is base64, percent-encoded in the URL as Azure storage does.
        sig = self.sign(relpath, se).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        return (
            f"{self.base}/blob/{relpath}?sv=2017-04-17&sr=b&sig={sig}"
            f"&se={se.replace(':', '%3A')}&sp=r"
        )


def _mix(value: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash of an integer."""
    x = (value + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _digest64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _when(moment: datetime, fraction: bool = False, zone: bool = True) -> str:
    """The service's timestamp forms: whole seconds, or .NET's seven fractional digits;
    with "Z", or (as real responses show for some fields) without any zone."""
    suffix = "Z" if zone else ""
    if fraction:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0" + suffix
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + suffix


def _bits(mask: int) -> Iterable[int]:
    slot = 0
    while mask:
        if mask & 1:
            yield slot
        mask >>= 1
        slot += 1


class _ImageSet:
    """One set of images (workspace or an iteration snapshot): index -> tag mask or None."""

    def __init__(self, masks: list[int | None], tags: set[int]) -> None:
        self.masks = masks
        self.tags = tags
        self._cache: dict[tuple[object, ...], Any] = {}

    def touch(self) -> None:
        self._cache.clear()

    def mask(self, index: int) -> int | None:
        return self.masks[index] if 0 <= index < len(self.masks) else None

    def has(self, index: int) -> bool:
        return self.mask(index) is not None

    def remove(self, index: int) -> bool:
        if self.mask(index) is None:
            return False
        self.masks[index] = None
        self.touch()
        return True

    def listing(self, status: str, tag_mask: int) -> Sequence[int]:
        """Indices (oldest first) matching the tagging status and any of the tag bits.

        Kept as a 4-byte array: a full-size project caches one per set it was asked about
        (21 of them), which as lists of int objects would cost about 3.6 MB each.
        """
        key = ("list", status, tag_mask)
        found = self._cache.get(key)
        if found is None:
            masks = self.masks
            if status == "Untagged":
                picked = (i for i, m in enumerate(masks) if m == 0)
            elif tag_mask:
                picked = (i for i, m in enumerate(masks) if m is not None and m & tag_mask)
            elif status == "Tagged":
                picked = (i for i, m in enumerate(masks) if m)
            else:
                picked = (i for i, m in enumerate(masks) if m is not None)
            found = array.array("I", picked)
            if len(self._cache) >= _MAX_CACHED_FILTERS:
                self._cache.clear()
            self._cache[key] = found
        result: Sequence[int] = found
        return result

    def tag_counts(self) -> Counter[int]:
        found = self._cache.get(("counts",))
        if found is None:
            by_mask = Counter(m for m in self.masks if m)
            found = Counter[int]()
            for mask, count in by_mask.items():
                for slot in _bits(mask):
                    found[slot] += count
            self._cache[("counts",)] = found
        result: Counter[int] = found
        return result


@dataclass
class _Export:
    platform: str
    flavor: str | None
    status: str = "Done"
    ready_at: float = -math.inf  # clock time when an "Exporting" export becomes "Done"


@dataclass
class _Iteration:
    id: str
    ordinal: int
    name: str
    created: datetime
    trained_at: datetime
    training_minutes: int
    images: _ImageSet
    publish_name: str = ""
    publish_resource: str = ""
    last_modified: datetime | None = None
    exports: list[_Export] = field(default_factory=list)
    status: str = "Completed"  # New | Training | Completed | Failed
    ready_at: float = math.inf  # clock time when a "Training" iteration becomes "Completed"


@dataclass(frozen=True)
class _Prediction:
    id: str
    ordinal: int
    iteration_id: str
    created: datetime
    results: tuple[tuple[str, str, float, tuple[float, float, float, float] | None], ...]


@dataclass
class _Project:
    ordinal: int
    id: str
    name: str
    description: str
    domain_id: str
    classification_type: str | None
    detection: bool
    created: datetime
    hi: int
    perm_a: int
    perm_a_inv: int
    perm_k: int
    salt: int
    workspace: _ImageSet
    workspace_id: str
    slots: int = 0
    metadata: dict[int, dict[str, str]] = field(default_factory=dict)
    tag_defs: list[TagDef] = field(default_factory=list)
    tag_slot: dict[str, int] = field(default_factory=dict)
    iterations: dict[str, _Iteration] = field(default_factory=dict)
    predictions: dict[str, _Prediction] = field(default_factory=dict)
    # Asynchronous removals not yet visible: (due at, set key, image indices); the set key is
    # "" for the workspace, else an iteration id.
    pending: list[tuple[float, str, tuple[int, ...]]] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)

    @property
    def hex(self) -> str:
        return self.id.replace("-", "")

    def image_guid(self, index: int) -> str:
        low = (((index * self.perm_a) & _MASK62) ^ self.perm_k) | (2 << 62)
        high = self.hi ^ (_mix(low) & _HIGH_SCRAMBLE)
        return str(uuid.UUID(int=(high << 64) | low))

    def image_index(self, guid: str) -> int | None:
        value = uuid.UUID(guid).int
        low = value & _MASK64
        if low >> 62 != 2 or value >> 64 != self.hi ^ (_mix(low) & _HIGH_SCRAMBLE):
            return None
        index = (((low & _MASK62) ^ self.perm_k) * self.perm_a_inv) & _MASK62
        return index if index < self.slots else None

    def image_hash(self, index: int) -> int:
        return _mix(self.salt ^ index)

    def image_created(self, index: int) -> datetime:
        micro = (self.image_hash(index) >> 24) % 1_000_000
        return self.created + timedelta(seconds=60 + index * _IMAGE_STEP_S, microseconds=micro)

    def image_size(self, index: int) -> tuple[int, int]:
        h = self.image_hash(index)
        return 320 + h % 1281, 240 + (h >> 12) % 961

    def exists(self, index: int) -> bool:
        if self.workspace.has(index):
            return True
        return any(it.images.has(index) for it in self.iterations.values())

    def pending_in(self, key: str) -> set[int]:
        return {i for _, k, batch in self.pending if k == key for i in batch}

    def image_set(self, key: str) -> _ImageSet | None:
        if key == "":
            return self.workspace
        iteration = self.iterations.get(key)
        return None if iteration is None else iteration.images

    def next_guid(self, kind: str) -> str:
        self.counters[kind] += 1
        return str(uuid.uuid5(_NAMESPACE, f"{self.id}/{kind}/{self.counters[kind]}"))


def _permutation(key: int) -> tuple[int, int, int]:
    a = (_mix(key) & _MASK62) | 1
    return a, pow(a, -1, 1 << 62), _mix(key + 1) & _MASK62


class EmulatorData:
    """All emulated state, guarded by one lock; the server and tests share one instance."""

    def __init__(
        self,
        seed: Seed | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.seed_value = seed.seed if seed else 0
        self.image_bytes_target = seed.image_bytes if seed else 2048
        self._sign_key = hashlib.sha256(f"cv-emulator-sas/{self.seed_value}".encode()).digest()
        self._wall_start = datetime.now(UTC).replace(microsecond=0)
        self._clock_start = clock()
        # Answer as the live service does where it departs from the spec (set by the server
        # from Faults.real_quirks): zone-less timestamps, nulls, absent empty fields.
        self.real_quirks = False
        self._projects: dict[str, _Project] = {}
        self._added_projects = 0
        self._made_projects = 0
        if seed is not None:
            for ordinal in range(seed.projects):
                self._seed_project(seed, ordinal)

    # ----------------------------------------------------------------- building

    def _guid(self, name: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"seed-{self.seed_value}/{name}"))

    def _new_project(
        self,
        key: str,
        name: str,
        description: str,
        *,
        detection: bool,
        classification_type: str | None,
        domain_id: str | None,
    ) -> _Project:
        self._made_projects += 1
        ordinal = self._made_projects
        project_id = self._guid(f"project/{key}")
        salt = _digest64(f"{self.seed_value}/{project_id}/images")
        hi = (salt & ~0xF000) | 0x4000  # GUID version nibble 4
        a, a_inv, k = _permutation(salt)
        domain = domain_id or (_COMPACT_DETECTION if detection else _COMPACT_CLASSIFICATION)
        project = _Project(
            ordinal=ordinal,
            id=project_id,
            name=name,
            description=description,
            domain_id=domain,
            classification_type=None if detection else (classification_type or "Multiclass"),
            detection=detection,
            created=_EPOCH + timedelta(days=ordinal * 3),
            hi=hi,
            perm_a=a,
            perm_a_inv=a_inv,
            perm_k=k,
            salt=salt,
            workspace=_ImageSet([], set()),
            workspace_id=self._guid(f"project/{key}/workspace"),
        )
        self._projects[project_id] = project
        return project

    def _define_tag(
        self, project: _Project, name: str, description: str | None, tag_type: str
    ) -> TagDef:
        slot = len(project.tag_defs)
        tag = TagDef(
            id=str(uuid.uuid5(_NAMESPACE, f"{project.id}/tag/{slot}")),
            slot=slot,
            name=name,
            description=description,
            type=tag_type,
            created=project.created + timedelta(seconds=10 + slot),
        )
        project.tag_defs.append(tag)
        project.tag_slot[tag.id] = slot
        project.workspace.tags.add(slot)
        project.workspace.touch()
        return tag

    def _seed_project(self, seed: Seed, ordinal: int) -> None:
        kind = ordinal % 3
        detection = kind == 1
        project = self._new_project(
            f"seeded/{ordinal}",
            f"Seed project {ordinal + 1}",
            f"Seeded {'object detection' if detection else 'classification'} project",
            detection=detection,
            classification_type="Multilabel" if kind == 2 else "Multiclass",
            domain_id=None,
        )
        for t in range(seed.tags):
            word = _TAG_WORDS[t % len(_TAG_WORDS)]
            name = word if t < len(_TAG_WORDS) else f"{word}-{t // len(_TAG_WORDS)}"
            self._define_tag(project, name, f"Images of a {word}", "Regular")
        growing = seed.smallest_snapshot > 0 and seed.iterations > 1
        retire_below: int | None  # None: any image may have been removed
        if growing:
            # Where each training but the last cut the images added so far; the last trains
            # on everything. Removals happen only before the last but one training's cut.
            span = seed.images - seed.smallest_snapshot
            cuts = [
                seed.smallest_snapshot + span * n // (seed.iterations - 1)
                for n in range(seed.iterations - 1)
            ]
            retire_below = cuts[-1]
        else:
            cuts = []
            retire_below = None if seed.iterations > 0 else 0
        masks: list[int | None] = []
        retired: list[int] = []
        untagged_cut = int(seed.untagged_fraction * 10_000)
        two_tags = kind != 0 and seed.tags > 1
        while len(masks) - len(retired) < seed.images:
            index = len(masks)
            h = _mix(project.image_hash(index))
            mask = 0
            if seed.tags and h % 10_000 >= untagged_cut:
                first = (h >> 16) % seed.tags
                mask = 1 << first
                if two_tags and (h >> 32) % 4 == 0:
                    mask |= 1 << ((first + 1 + (h >> 40) % (seed.tags - 1)) % seed.tags)
            masks.append(mask)
            if index % 20 == 7 and (retire_below is None or index < retire_below):
                retired.append(index)
        project.slots = len(masks)
        for n in range(seed.iterations):
            if growing:
                cutoff = cuts[n] if n < len(cuts) else len(masks)
                gone_before = cuts[n - 1] if n > 0 else 0  # removed after an earlier training
            else:
                cutoff = -(-len(masks) * (n + 1) // seed.iterations)
                gone_before = cutoff if n > 0 else 0
            snapshot = masks[:cutoff]
            for index in retired:
                if index >= gone_before:
                    break
                snapshot[index] = None
            self._make_iteration(project, snapshot, set(project.workspace.tags), cutoff)
        for index in retired:
            masks[index] = None
        project.workspace.masks = masks
        project.workspace.touch()
        iterations = list(project.iterations.values())
        if iterations:
            self._publish(project, iterations[0], f"prod-{ordinal + 1}")
            for it in iterations:
                it.exports.append(_Export("TensorFlow", "TensorFlowNormal"))
            iterations[-1].exports.append(_Export("ONNX", "ONNX12"))
            self._add_predictions(project, seed.predictions, iterations[0].id)

    def _make_iteration(
        self, project: _Project, masks: list[int | None], tags: set[int], cutoff: int
    ) -> _Iteration:
        project.counters["iteration"] += 1
        ordinal = project.counters["iteration"]
        created = project.created + timedelta(seconds=120 + cutoff * _IMAGE_STEP_S)
        minutes = 3 + _mix(project.salt + ordinal) % 40
        iteration = _Iteration(
            id=str(uuid.uuid5(_NAMESPACE, f"{project.id}/iteration/{ordinal}")),
            ordinal=ordinal,
            name=f"Iteration {ordinal}",
            created=created,
            trained_at=created + timedelta(minutes=minutes),
            training_minutes=minutes,
            images=_ImageSet(masks, tags),
        )
        project.iterations[iteration.id] = iteration
        return iteration

    def _publish(self, project: _Project, iteration: _Iteration, name: str) -> None:
        iteration.publish_name = name
        iteration.publish_resource = (
            f"/subscriptions/{self._guid('subscription')}/resourceGroups/emulator"
            "/providers/Microsoft.CognitiveServices/accounts/emulator-prediction"
        )
        iteration.last_modified = iteration.trained_at + timedelta(minutes=5)

    def _add_predictions(self, project: _Project, n: int, iteration_id: str) -> list[str]:
        made = []
        tags = [project.tag_defs[s] for s in sorted(project.workspace.tags)]
        for _ in range(n):
            project.counters["prediction"] += 1
            ordinal = project.counters["prediction"]
            h = _mix(project.salt ^ (0x5EED << 32) ^ ordinal)
            results = []
            for tag in tags:
                r = _mix(h ^ tag.slot)
                prob = round((r % 10_000) / 10_000, 4)
                box = None
                if project.detection:
                    left, top = (r >> 16) % 500 / 1000, (r >> 28) % 500 / 1000
                    width, height = (r >> 40) % 400 / 1000, (r >> 50) % 400 / 1000
                    box = (left, top, round(0.1 + width, 3), round(0.1 + height, 3))
                results.append((tag.id, tag.name, prob, box))
            results.sort(key=lambda item: -item[2])
            created = project.created + timedelta(days=30, seconds=ordinal * 3600 + h % 3600)
            prediction = _Prediction(
                id=str(uuid.uuid5(_NAMESPACE, f"{project.id}/prediction/{ordinal}")),
                ordinal=ordinal,
                iteration_id=iteration_id,
                created=created,
                results=tuple(results),
            )
            project.predictions[prediction.id] = prediction
            made.append(prediction.id)
        return made

    # -------------------------------------------------------- lookups (locked)

    def _project(self, project_id: str) -> _Project:
        project = self._projects.get(project_id.lower())
        if project is None:
            raise CvError(404, "NotFoundProject", f"Project {project_id} not found.")
        self._settle(project)
        return project

    def _iteration(self, project: _Project, iteration_id: str) -> _Iteration:
        iteration = project.iterations.get(iteration_id.lower())
        if iteration is None:
            raise CvError(404, "NotFoundIteration", f"Iteration {iteration_id} not found.")
        self._advance(iteration)
        return iteration

    def _advance(self, iteration: _Iteration) -> None:
        """Finish the training and the exports whose time has come."""
        now = self.clock()
        if iteration.status == "Training" and now >= iteration.ready_at:
            iteration.status = "Completed"
        for export in iteration.exports:
            if export.status == "Exporting" and now >= export.ready_at:
                export.status = "Done"

    def _set(self, project: _Project, iteration_id: str | None) -> _ImageSet:
        # Inference: the workspace's own id reads as the workspace.
        if iteration_id is None or iteration_id.lower() == project.workspace_id:
            return project.workspace
        return self._iteration(project, iteration_id).images

    def _tag_slot(self, project: _Project, tag_id: str, image_set: _ImageSet) -> int:
        slot = project.tag_slot.get(tag_id.lower())
        if slot is None or slot not in image_set.tags:
            raise CvError(404, "NotFoundTag", f"Tag {tag_id} not found.")
        return slot

    def _settle(self, project: _Project) -> None:
        """Apply the asynchronous iteration removals whose time has come."""
        if not project.pending:
            return
        now = self.clock()
        due = [(key, batch) for at, key, batch in project.pending if at <= now]
        if not due:
            return
        project.pending = [entry for entry in project.pending if entry[0] > now]
        for key, batch in due:
            image_set = project.image_set(key)
            if image_set is not None:  # None: the iteration was deleted meanwhile
                for index in batch:
                    image_set.remove(index)

    # ------------------------------------------------------------ test helpers

    def project_ids(self) -> list[str]:
        """Return the project ids, oldest first."""
        with self.lock:
            return list(self._projects)

    def iteration_ids(self, project_id: str) -> list[str]:
        """Return the project's trained iteration ids, oldest first."""
        with self.lock:
            return list(self._project(project_id).iterations)

    def workspace_id(self, project_id: str) -> str:
        """Return the id of the project's workspace (not listed by GetIterations)."""
        with self.lock:
            return self._project(project_id).workspace_id

    def publish_name(self, project_id: str, iteration_id: str) -> str:
        """Return the iteration's publish name ("" when not published)."""
        with self.lock:
            project = self._project(project_id)
            return self._iteration(project, iteration_id).publish_name

    def tag_ids(self, project_id: str, iteration_id: str | None = None) -> list[str]:
        """Return the tag ids of the workspace or of an iteration's snapshot."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            return [project.tag_defs[s].id for s in sorted(image_set.tags)]

    def tag(self, project_id: str, tag_id: str) -> TagDef:
        """Return a tag's definition (workspace or any iteration)."""
        with self.lock:
            project = self._project(project_id)
            slot = project.tag_slot.get(tag_id.lower())
            if slot is None:
                raise KeyError(tag_id)
            return project.tag_defs[slot]

    def image_ids(self, project_id: str, iteration_id: str | None = None) -> list[str]:
        """Return the image ids of the workspace or an iteration, oldest first."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            return [project.image_guid(i) for i in image_set.listing("All", 0)]

    def snapshot_only_ids(self, project_id: str) -> list[str]:
        """Return the ids of the images only iteration snapshots hold (not the workspace)."""
        with self.lock:
            project = self._project(project_id)
            held: set[int] = set()
            for iteration in project.iterations.values():
                held.update(iteration.images.listing("All", 0))
            return [project.image_guid(i) for i in sorted(held) if not project.workspace.has(i)]

    def image_tag_ids(
        self, project_id: str, image_id: str, iteration_id: str | None = None
    ) -> list[str]:
        """Return the tag ids an image has in the workspace or an iteration ([] when absent)."""
        with self.lock:
            project = self._project(project_id)
            index = project.image_index(image_id)
            mask = None if index is None else self._set(project, iteration_id).mask(index)
            return [project.tag_defs[s].id for s in _bits(mask or 0)]

    def has_image(self, project_id: str, image_id: str, iteration_id: str | None = None) -> bool:
        """Return True when the image is in the workspace (or the given iteration) now."""
        with self.lock:
            project = self._project(project_id)
            index = project.image_index(image_id)
            return index is not None and self._set(project, iteration_id).has(index)

    def image_exists(self, project_id: str, image_id: str) -> bool:
        """Return True when any set of the project still holds the image (its blobs serve)."""
        with self.lock:
            project = self._projects.get(project_id.lower())
            if project is None:
                return False
            self._settle(project)
            index = project.image_index(image_id)
            return index is not None and project.exists(index)

    def prediction_ids(self, project_id: str) -> list[str]:
        """Return the stored prediction ids, oldest first."""
        with self.lock:
            return list(self._project(project_id).predictions)

    def pending_deletions(self) -> int:
        """Return how many asynchronous removal batches are not yet visible."""
        with self.lock:
            for project in self._projects.values():
                self._settle(project)
            return sum(len(p.pending) for p in self._projects.values())

    def settle(self) -> None:
        """Make every pending asynchronous removal visible now."""
        with self.lock:
            for project in self._projects.values():
                project.pending = [(float("-inf"), k, b) for _, k, b in project.pending]
                self._settle(project)

    def add_project(
        self,
        name: str,
        *,
        description: str = "",
        object_detection: bool = False,
        classification_type: str = "Multiclass",
        domain_id: str | None = None,
    ) -> str:
        """Create an empty project (no tags, images or iterations); return its id."""
        with self.lock:
            self._added_projects += 1
            project = self._new_project(
                f"added/{self._added_projects}",
                name,
                description,
                detection=object_detection,
                classification_type=classification_type,
                domain_id=domain_id,
            )
            return project.id

    def add_tag(
        self,
        project_id: str,
        name: str,
        *,
        description: str | None = None,
        tag_type: str = "Regular",
    ) -> str:
        """Create a workspace tag with any name; return its id."""
        with self.lock:
            return self._define_tag(self._project(project_id), name, description, tag_type).id

    def add_images(
        self,
        project_id: str,
        n: int,
        *,
        tag_ids: Sequence[str] = (),
        metadata: dict[str, str] | None = None,
    ) -> list[str]:
        """Add `n` workspace images carrying `tag_ids` (none = untagged); return their ids."""
        with self.lock:
            project = self._project(project_id)
            mask = 0
            for tag_id in tag_ids:
                mask |= 1 << self._tag_slot(project, tag_id, project.workspace)
            masks = project.workspace.masks
            masks.extend([None] * (project.slots - len(masks)))
            start = project.slots
            masks.extend([mask] * n)
            project.slots += n
            if metadata:
                for index in range(start, start + n):
                    project.metadata[index] = dict(metadata)
            project.workspace.touch()
            return [project.image_guid(i) for i in range(start, start + n)]

    def tag_images(self, project_id: str, image_ids: Sequence[str], tag_id: str) -> None:
        """Add a workspace tag to workspace images (someone tagging in the portal meanwhile)."""
        with self.lock:
            project = self._project(project_id)
            workspace = project.workspace
            bit = 1 << self._tag_slot(project, tag_id, workspace)
            for image_id in image_ids:
                index = project.image_index(image_id)
                mask = None if index is None else workspace.mask(index)
                if index is None or mask is None:
                    raise KeyError(f"no workspace image {image_id}")
                workspace.masks[index] = mask | bit
            workspace.touch()

    def add_iteration(
        self,
        project_id: str,
        *,
        publish_name: str | None = None,
        status: str = "Completed",
        train_seconds: float | None = None,
    ) -> str:
        """Train an iteration: snapshot the workspace's images and tags; return its id.

        `status` "Training" stays so for `train_seconds` (None: until told otherwise), then
        is "Completed"; "New" and "Failed" stay as they are.
        """
        with self.lock:
            project = self._project(project_id)
            snapshot = list(project.workspace.masks)
            iteration = self._make_iteration(
                project, snapshot, set(project.workspace.tags), project.slots
            )
            iteration.status = status
            if status == "Training" and train_seconds is not None:
                iteration.ready_at = self.clock() + train_seconds
            if publish_name:
                self._publish(project, iteration, publish_name)
            return iteration.id

    def set_iteration_status(self, project_id: str, iteration_id: str, status: str) -> None:
        """Move an iteration to `status` (a training that finishes or fails meanwhile)."""
        with self.lock:
            project = self._project(project_id)
            self._iteration(project, iteration_id).status = status

    def iteration_status(self, project_id: str, iteration_id: str) -> str:
        """Return an iteration's status now."""
        with self.lock:
            project = self._project(project_id)
            return self._iteration(project, iteration_id).status

    def publish(self, project_id: str, iteration_id: str, name: str) -> None:
        """Publish an iteration under `name`."""
        with self.lock:
            project = self._project(project_id)
            self._publish(project, self._iteration(project, iteration_id), name)

    def unpublish(self, project_id: str, iteration_id: str) -> None:
        """Unpublish an iteration (no-op when it is not published)."""
        with self.lock:
            project = self._project(project_id)
            self._iteration(project, iteration_id).publish_name = ""

    def add_export(
        self,
        project_id: str,
        iteration_id: str,
        platform: str = "TensorFlow",
        flavor: str | None = None,
        status: str = "Done",
        ready_after: float | None = None,
    ) -> None:
        """Record an export of an iteration; an "Exporting" one is Done after `ready_after` s."""
        with self.lock:
            project = self._project(project_id)
            ready_at = math.inf if ready_after is None else self.clock() + ready_after
            export = _Export(platform, flavor, status, ready_at)
            self._iteration(project, iteration_id).exports.append(export)

    def add_predictions(
        self, project_id: str, n: int, *, iteration_id: str | None = None
    ) -> list[str]:
        """Store `n` predictions (made by `iteration_id`, default the first); return their ids."""
        with self.lock:
            project = self._project(project_id)
            if iteration_id is None:
                iteration_id = next(iter(project.iterations), project.workspace_id)
            return self._add_predictions(project, n, iteration_id.lower())

    def links(self, base: str, vnet: bool, lifetime: float | None = None) -> Links:
        """Return the URI maker for responses served at `base`; links live `lifetime` seconds.

        None: links expire in 100 years (a test that does not care about expiry).
        """
        seconds = 100 * 365 * 86_400.0 if lifetime is None else lifetime
        # Storage compares whole seconds; round up so a lifetime never comes out shorter.
        expires = self.now() + timedelta(seconds=math.ceil(seconds))
        return Links(base=base, vnet=vnet, sign=self._sign, expires=expires)

    def now(self) -> datetime:
        """The emulator's wall time: the start time moved on by the clock (fake clocks too)."""
        return self._wall_start + timedelta(seconds=self.clock() - self._clock_start)

    def travel(self, seconds: float) -> None:
        """Move the wall time on by `seconds` at once: links age, nothing else changes."""
        with self.lock:
            self._wall_start += timedelta(seconds=seconds)

    def _sign(self, relpath: str, se: str) -> str:
        message = f"{relpath}\n{se}".encode()
        mac = hashlib.blake2b(message, key=self._sign_key, digest_size=32)
        return base64.b64encode(mac.digest()).decode("ascii")

    # ---------------------------------------------------------------- rendering

    def _image_json(
        self, project: _Project, image_set: _ImageSet, index: int, links: Links
    ) -> dict[str, Json]:
        guid = project.image_guid(index)
        ghex = guid.replace("-", "")
        width, height = project.image_size(index)
        created = project.image_created(index)
        mask = image_set.mask(index) or 0
        tags = []
        regions: list[dict[str, Json]] | None = [] if project.detection else None
        quirks = self.real_quirks
        for slot in _bits(mask):
            tag = project.tag_defs[slot]
            tagged = created + timedelta(seconds=2)
            stamp = _when(tagged, fraction=True, zone=False) if quirks else _when(tagged)
            tags.append({"tagId": tag.id, "tagName": tag.name, "created": stamp})
            if regions is not None:
                r = _mix(project.image_hash(index) ^ (slot + 1))
                left, top = (r % 500) / 1000, ((r >> 12) % 500) / 1000
                regions.append(
                    {
                        "regionId": str(uuid.UUID(int=(_mix(r) << 64) | r, version=4)),
                        "tagName": tag.name,
                        "created": stamp,
                        "tagId": tag.id,
                        "left": left,
                        "top": top,
                        "width": round(0.05 + ((r >> 24) % 450) / 1000, 3),
                        "height": round(0.05 + ((r >> 36) % 450) / 1000, 3),
                    }
                )
        base = f"i-{project.hex}/"
        image: dict[str, Json] = {
            "id": guid,
            # Recorded: seven fractional digits and no time zone ("2020-11-06T18:23:45.5635527",
            # azure-sdk-for-net TrainingTests/UpdateImageMetadata.json, GetImagesAndCount.json).
            "created": _when(created, fraction=True, zone=not quirks),
            "width": width,
            "height": height,
            "resizedImageUri": links.uri(f"{base}i-{ghex}"),
            "thumbnailUri": links.uri(f"{base}t-{ghex}"),
            "originalImageUri": links.uri(f"{base}o-{ghex}"),
            "tags": tags,
            "regions": regions,
            "metadata": dict(project.metadata.get(index, {})),
        }
        if quirks:
            # Recorded (same files): a classification image has no "regions" key, and an
            # image without metadata no "metadata" key.
            if regions is None:
                del image["regions"]
            if not image["metadata"]:
                del image["metadata"]
        return image

    def _project_json(self, project: _Project, links: Links) -> dict[str, Json]:
        listing = project.workspace.listing("All", 0)
        # Recorded nulls (NOTES-customvision.md): an empty project's thumbnailUri is null.
        thumbnail: str | None = None if self.real_quirks else ""
        if listing:
            ghex = project.image_guid(listing[0]).replace("-", "")
            thumbnail = links.uri(f"i-{project.hex}/t-{ghex}")
        modified = max(
            [
                project.created,
                *(it.last_modified or it.trained_at for it in project.iterations.values()),
            ]
        )
        return {
            "id": project.id,
            "name": project.name,
            "description": project.description,
            "settings": {
                "domainId": project.domain_id,
                "classificationType": project.classification_type,
                "targetExportPlatforms": [],
                "useNegativeSet": True,
                "imageProcessingSettings": {"augmentationMethods": None},
            },
            "created": _when(project.created),
            "lastModified": _when(modified),
            "thumbnailUri": thumbnail,
            "drModeEnabled": False,
            "status": "Succeeded",
        }

    def _iteration_json(self, project: _Project, iteration: _Iteration) -> dict[str, Json]:
        self._advance(iteration)
        exportable = project.domain_id in _COMPACT
        published = bool(iteration.publish_name)
        if iteration.status != "Completed":
            # As recorded for an iteration in training (azure-sdk-for-net SessionRecords
            # TrainingTests/TrainAndPublishProject.json): no trainedAt at all, nulls for what
            # training decides. Inferred: New and Failed iterations look the same.
            return {
                "id": iteration.id,
                "name": iteration.name,
                "status": iteration.status,
                "created": _when(iteration.created),
                "lastModified": _when(iteration.last_modified or iteration.created),
                "projectId": project.id,
                "exportable": False,
                "exportableTo": None,
                "domainId": None,
                "classificationType": None,
                "trainingType": "Regular",
                "reservedBudgetInHours": 0,
                "trainingTimeInMinutes": 0,
                "publishName": None,
                "originalPublishResourceId": None,
            }
        # Recorded (TrainAndPublishProject.json): an unpublished iteration's publishName and
        # originalPublishResourceId are null, not "" as the spec's example shows.
        unpublished = None if self.real_quirks else ""
        return {
            "id": iteration.id,
            "name": iteration.name,
            "status": "Completed",
            "created": _when(iteration.created),
            "lastModified": _when(iteration.last_modified or iteration.trained_at),
            "trainedAt": _when(iteration.trained_at),
            "projectId": project.id,
            "exportable": exportable,
            "exportableTo": list(_EXPORT_PLATFORMS) if exportable else [],
            "domainId": project.domain_id,
            "classificationType": project.classification_type,
            "trainingType": "Regular",
            "reservedBudgetInHours": 0,
            "trainingTimeInMinutes": iteration.training_minutes,
            "publishName": iteration.publish_name if published else unpublished,
            "originalPublishResourceId": iteration.publish_resource if published else unpublished,
        }

    def _tag_json(self, project: _Project, image_set: _ImageSet, slot: int) -> dict[str, Json]:
        tag = project.tag_defs[slot]
        return {
            "id": tag.id,
            "name": tag.name,
            "description": tag.description,
            "type": tag.type,
            "imageCount": image_set.tag_counts()[slot],
        }

    def _export_relpath(self, project: _Project, iteration: _Iteration, export: _Export) -> str:
        suffix = f"-{export.flavor}" if export.flavor else ""
        return f"e-{project.hex}/{iteration.id.replace('-', '')}-{export.platform}{suffix}.zip"

    def _export_json(
        self, project: _Project, iteration: _Iteration, export: _Export, links: Links
    ) -> dict[str, Json]:
        done = export.status == "Done"
        return {
            "platform": export.platform,
            "status": export.status,
            # While Exporting: null as recorded (azure-sdk-for-net TrainingTests/ExportTests.json),
            # "" as the spec's example shows.
            "downloadUri": links.uri(self._export_relpath(project, iteration, export))
            if done
            else (None if self.real_quirks else ""),
            "flavor": export.flavor,
            "newerVersionAvailable": False,
        }

    def _prediction_json(
        self, project: _Project, prediction: _Prediction, links: Links
    ) -> dict[str, Json]:
        phex = prediction.id.replace("-", "")
        base = f"p-{project.hex}/"
        return {
            "resizedImageUri": links.uri(f"{base}i-{phex}"),
            "thumbnailUri": links.uri(f"{base}t-{phex}"),
            "originalImageUri": links.uri(f"{base}o-{phex}"),
            "domain": project.domain_id,
            "id": prediction.id,
            "project": project.id,
            "iteration": prediction.iteration_id,
            "created": _when(prediction.created, fraction=True),
            "predictions": [
                {
                    "probability": prob,
                    "tagId": tag_id,
                    "tagName": tag_name,
                    "boundingBox": None
                    if box is None
                    else {"left": box[0], "top": box[1], "width": box[2], "height": box[3]},
                    "tagType": "Regular",
                }
                for tag_id, tag_name, prob, box in prediction.results
            ],
        }

    # ------------------------------------------------------------- operations

    def api_domains(self) -> list[dict[str, Json]]:
        """GetDomains."""
        return [{**d, "exportable": d["id"] in _COMPACT, "enabled": True} for d in DOMAINS]

    def api_create_project(
        self,
        name: str,
        links: Links,
        *,
        description: str = "",
        domain_id: str | None = None,
        classification_type: str | None = None,
    ) -> dict[str, Json]:
        """CreateProject: an empty project; the domain's type makes it object detection.

        Spec: name required, domainId / classificationType optional (General and Multiclass
        when absent, inferred). Refusals (spec codes; which one Azure picks is inferred):
        an empty or over-long name BadRequestProjectName, a taken name
        BadRequestProjectNameNotUnique, an unknown domain BadRequestProjectUnknownDomain.
        """
        if not name.strip() or len(name) > 255:
            raise CvError(400, "BadRequestProjectName", "The project name is not valid.")
        domain = (
            DOMAINS[0]
            if domain_id is None
            else next((d for d in DOMAINS if str(d["id"]).lower() == domain_id.lower()), None)
        )
        if domain is None:
            raise CvError(400, "BadRequestProjectUnknownDomain", f"Unknown domain {domain_id}.")
        with self.lock:
            if any(p.name == name for p in self._projects.values()):
                raise CvError(
                    400, "BadRequestProjectNameNotUnique", f"A project named {name} exists."
                )
        detection = domain["type"] == "ObjectDetection"
        project_id = self.add_project(
            name,
            description=description,
            object_detection=detection,
            classification_type=classification_type or "Multiclass",
            domain_id=str(domain["id"]),
        )
        return self.api_project(project_id, links)

    def api_projects(self, links: Links) -> list[dict[str, Json]]:
        """GetProjects."""
        with self.lock:
            for project in self._projects.values():
                self._settle(project)
            return [self._project_json(p, links) for p in self._projects.values()]

    def api_project(self, project_id: str, links: Links) -> dict[str, Json]:
        """GetProject."""
        with self.lock:
            return self._project_json(self._project(project_id), links)

    def api_export_project(self, project_id: str) -> dict[str, Json]:
        """ExportProject: counts plus an opaque import token."""
        with self.lock:
            project = self._project(project_id)
            images = len(project.workspace.listing("All", 0))
            token = base64.b64encode(f"{project.id}/{images}".encode()).decode("ascii")
            return {
                "iterationCount": len(project.iterations),
                "imageCount": images,
                "tagCount": len(project.workspace.tags),
                "regionCount": sum(project.workspace.tag_counts().values())
                if project.detection
                else 0,
                "estimatedImportTimeInMS": 1000 + images,
                "token": token,
            }

    def api_delete_project(self, project_id: str) -> None:
        """DeleteProject: refused while an iteration is published."""
        with self.lock:
            project = self._project(project_id)
            published = [it for it in project.iterations.values() if it.publish_name]
            if published:
                raise CvError(
                    400,
                    "BadRequestIterationIsPublished",
                    f"Cannot delete the project: iteration {published[0].id} is published.",
                )
            del self._projects[project.id]

    def api_iterations(self, project_id: str) -> list[dict[str, Json]]:
        """GetIterations."""
        with self.lock:
            project = self._project(project_id)
            return [self._iteration_json(project, it) for it in project.iterations.values()]

    def api_iteration(self, project_id: str, iteration_id: str) -> dict[str, Json]:
        """GetIteration."""
        with self.lock:
            project = self._project(project_id)
            return self._iteration_json(project, self._iteration(project, iteration_id))

    def api_delete_iteration(self, project_id: str, iteration_id: str) -> None:
        """DeleteIteration: refused for the workspace and for published iterations."""
        with self.lock:
            project = self._project(project_id)
            if iteration_id.lower() == project.workspace_id:
                raise CvError(
                    400, "BadRequestWorkspaceNotDeletable", "The workspace cannot be deleted."
                )
            iteration = self._iteration(project, iteration_id)
            if iteration.publish_name:
                raise CvError(
                    400,
                    "BadRequestIterationIsPublished",
                    f"Iteration {iteration.id} is published; unpublish it first.",
                )
            del project.iterations[iteration.id]

    def api_performance(
        self, project_id: str, iteration_id: str, threshold: float, overlap: float
    ) -> dict[str, Json]:
        """GetIterationPerformance: deterministic figures per tag of the snapshot."""
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            per_tag: list[dict[str, Json]] = []
            for slot in sorted(iteration.images.tags):
                tag = project.tag_defs[slot]
                r = _mix(project.salt ^ (iteration.ordinal << 20) ^ slot)
                precision = round(min(1.0, 0.6 + (r % 300) / 1000 + threshold / 20), 4)
                recall = round(max(0.0, 0.95 - (r >> 16) % 300 / 1000 - threshold / 10), 4)
                per_tag.append(
                    {
                        "id": tag.id,
                        "name": tag.name,
                        "precision": precision,
                        "precisionStdDeviation": 0.0,
                        "recall": recall,
                        "recallStdDeviation": 0.0,
                        "averagePrecision": round((precision + recall) / 2, 4)
                        if project.detection
                        else None,
                    }
                )

            def mean(key: str) -> float:
                values = [float(t[key]) for t in per_tag]
                return round(sum(values) / len(values), 4) if values else 0.0

            return {
                "perTagPerformance": per_tag,
                "precision": mean("precision"),
                "precisionStdDeviation": 0.0,
                "recall": mean("recall"),
                "recallStdDeviation": 0.0,
                "averagePrecision": mean("averagePrecision") if project.detection else None,
            }

    def api_image_performances(
        self,
        project_id: str,
        iteration_id: str,
        links: Links,
        *,
        tag_ids: Sequence[str],
        newest_first: bool,
        skip: int,
        take: int,
    ) -> list[dict[str, Json]]:
        """GetImagePerformances: the snapshot's tagged images, each with its predictions.

        Inferred: every tagged image of the snapshot counts as evaluated (the service holds
        out a share it does not name); probabilities are derived from the image and tag.
        """
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            image_set = iteration.images
            found = self._filtered(project, image_set, "Tagged", tag_ids)
            page = _page(found, newest_first=newest_first, skip=skip, take=take)
            result = []
            for index in page:
                image = self._image_json(project, image_set, index, links)
                predictions = []
                for slot in sorted(image_set.tags):
                    tag = project.tag_defs[slot]
                    r = _mix(project.image_hash(index) ^ (slot << 8) ^ iteration.ordinal)
                    predictions.append(
                        {
                            "probability": round((r % 10_000) / 10_000, 4),
                            "tagId": tag.id,
                            "tagName": tag.name,
                            "boundingBox": None,
                            "tagType": "Regular",
                        }
                    )
                result.append(
                    {
                        "predictions": predictions,
                        "id": image["id"],
                        "created": image["created"],
                        "width": image["width"],
                        "height": image["height"],
                        "imageUri": image["resizedImageUri"],
                        "thumbnailUri": image["thumbnailUri"],
                        "tags": image["tags"],
                        "regions": image.get("regions"),
                    }
                )
            return result

    def api_image_performance_count(
        self, project_id: str, iteration_id: str, tag_ids: Sequence[str]
    ) -> int:
        """GetImagePerformanceCount: how many images GetImagePerformances lists."""
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            return len(self._filtered(project, iteration.images, "Tagged", tag_ids))

    def api_publish(self, project_id: str, iteration_id: str, name: str) -> bool:
        """PublishIteration."""
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            if not name.strip():
                raise CvError(400, "BadRequestInvalidPublishName", "The publish name is empty.")
            self._publish(project, iteration, name)
            return True

    def api_unpublish(self, project_id: str, iteration_id: str) -> None:
        """UnpublishIteration; inferred: an unpublished one answers IterationNotPublished."""
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            if not iteration.publish_name:
                raise CvError(
                    400,
                    "BadRequestIterationNotPublished",
                    f"Iteration {iteration.id} is not published.",
                )
            iteration.publish_name = ""
            iteration.last_modified = (iteration.last_modified or iteration.trained_at) + timedelta(
                minutes=1
            )

    def api_exports(
        self, project_id: str, iteration_id: str, links: Links
    ) -> list[dict[str, Json]]:
        """GetExports: an "Exporting" export shows downloadUri null (recorded)."""
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            return [self._export_json(project, iteration, e, links) for e in iteration.exports]

    def api_export_iteration(
        self,
        project_id: str,
        iteration_id: str,
        platform: str,
        flavor: str | None,
        links: Links,
        *,
        queue_seconds: float = 0.0,
        refuse_repeat: bool = False,
    ) -> dict[str, Json]:
        """ExportIteration: queued ("Exporting", no link) for `queue_seconds`, then Done.

        A second request for the same platform and flavor while one is queued (with
        `refuse_repeat`, at any time) is refused with BadRequestExportAlreadyInProgress, "<id>
        is already queued for export" (azure-sdk-for-python issue 23922, azure-sdk-for-js issue
        10331; the code from third-party sample code handling that answer; the status 400 is
        inferred). A new export replaces a finished one of the same platform and flavor.
        """
        with self.lock:
            project = self._project(project_id)
            iteration = self._iteration(project, iteration_id)
            if iteration.status != "Completed":
                # Inferred: the spec's code for an iteration that is not trained.
                message = f"Iteration {iteration.id} is not trained."
                raise CvError(400, "BadRequestIterationIsNotTrained", message)
            if project.domain_id not in _COMPACT:
                raise CvError(
                    400,
                    "BadRequestProjectUnsupportedExportPlatform",
                    "The project's domain cannot be exported.",
                )
            same = [e for e in iteration.exports if (e.platform, e.flavor) == (platform, flavor)]
            if any(e.status == "Exporting" for e in same) or (same and refuse_repeat):
                raise CvError(
                    400,
                    "BadRequestExportAlreadyInProgress",
                    f"{iteration.id} is already queued for export",
                )
            for old in same:
                iteration.exports.remove(old)
            if queue_seconds > 0:
                export = _Export(platform, flavor, "Exporting", self.clock() + queue_seconds)
            else:
                export = _Export(platform, flavor)
            iteration.exports.append(export)
            return self._export_json(project, iteration, export, links)

    def api_tags(self, project_id: str, iteration_id: str | None) -> list[dict[str, Json]]:
        """GetTags."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            return [self._tag_json(project, image_set, s) for s in sorted(image_set.tags)]

    def api_create_tag(
        self, project_id: str, name: str, *, description: str | None, tag_type: str
    ) -> dict[str, Json]:
        """CreateTag: a workspace tag (spec codes BadRequestTagName, BadRequestTagNameNotUnique)."""
        if not name.strip() or len(name) > 255:
            raise CvError(400, "BadRequestTagName", "The tag name is not valid.")
        with self.lock:
            project = self._project(project_id)
            if any(t.name == name for t in project.tag_defs):
                raise CvError(400, "BadRequestTagNameNotUnique", f"A tag named {name} exists.")
            tag = self._define_tag(project, name, description, tag_type)
            return self._tag_json(project, project.workspace, tag.slot)

    def api_train(self, project_id: str, train_seconds: float) -> dict[str, Json]:
        """TrainProject: a new iteration "Training" for `train_seconds`, then "Completed".

        Refused (spec codes, conditions from Microsoft's docs: at least 5 images per tag for
        classification, 15 for object detection, two tags for classification) with
        BadRequestTrainingValidationFailed, or BadRequestTrainingAlreadyInProgress while
        another iteration trains (inferred).
        """
        with self.lock:
            project = self._project(project_id)
            for iteration in project.iterations.values():
                self._advance(iteration)
                if iteration.status == "Training":
                    raise CvError(
                        400, "BadRequestTrainingAlreadyInProgress", "A training is in progress."
                    )
            counts = project.workspace.tag_counts()
            least = 15 if project.detection else 5
            used = [s for s in project.workspace.tags if counts.get(s, 0)]
            if (
                not used
                or (not project.detection and len(used) < 2)
                or any(counts[s] < least for s in used)
            ):
                raise CvError(
                    400,
                    "BadRequestTrainingValidationFailed",
                    f"Each tag needs at least {least} images.",
                )
        iteration_id = self.add_iteration(
            project_id, status="Training", train_seconds=train_seconds
        )
        return self.api_iteration(project_id, iteration_id)

    def api_tag(self, project_id: str, tag_id: str, iteration_id: str | None) -> dict[str, Json]:
        """GetTag."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            return self._tag_json(project, image_set, self._tag_slot(project, tag_id, image_set))

    def api_delete_tag(self, project_id: str, tag_id: str) -> None:
        """DeleteTag: leaves the workspace and its images; iterations keep it."""
        with self.lock:
            project = self._project(project_id)
            workspace = project.workspace
            slot = self._tag_slot(project, tag_id, workspace)
            workspace.tags.discard(slot)
            keep = ~(1 << slot)
            workspace.masks = [None if m is None else m & keep for m in workspace.masks]
            workspace.touch()

    def _tag_mask(self, project: _Project, image_set: _ImageSet, tag_ids: Sequence[str]) -> int:
        # Inference: an unknown tag id filters to nothing rather than failing.
        mask = 0
        for tag_id in tag_ids:
            slot = project.tag_slot.get(tag_id.lower())
            if slot is not None and slot in image_set.tags:
                mask |= 1 << slot
        return mask

    def _filtered(
        self,
        project: _Project,
        image_set: _ImageSet,
        status: TaggingStatus,
        tag_ids: Sequence[str],
        where: Expr | None = None,
    ) -> Sequence[int]:
        if tag_ids and status != "Untagged":
            mask = self._tag_mask(project, image_set, tag_ids)
            found = image_set.listing(status, mask) if mask else ()
        else:
            found = image_set.listing(status, 0)
        if where is None:
            return found
        # Inferred: metadata belongs to the image, so a snapshot filters on the same pairs.
        empty: dict[str, str] = {}
        return [i for i in found if where.matches(project.metadata.get(i, empty))]

    def api_images(
        self,
        project_id: str,
        links: Links,
        *,
        iteration_id: str | None,
        status: TaggingStatus,
        tag_ids: Sequence[str],
        newest_first: bool,
        skip: int,
        take: int,
        where: Expr | None = None,
    ) -> list[dict[str, Json]]:
        """GetImages / GetTaggedImages / GetUntaggedImages: one offset page."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            found = self._filtered(project, image_set, status, tag_ids, where)
            page = _page(found, newest_first=newest_first, skip=skip, take=take)
            return [self._image_json(project, image_set, i, links) for i in page]

    def api_image_count(
        self,
        project_id: str,
        *,
        iteration_id: str | None,
        status: TaggingStatus,
        tag_ids: Sequence[str],
        where: Expr | None = None,
    ) -> int:
        """GetImageCount / GetTaggedImageCount / GetUntaggedImageCount."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            return len(self._filtered(project, image_set, status, tag_ids, where))

    def api_update_metadata(
        self,
        project_id: str,
        image_ids: Sequence[str],
        pairs: dict[str, str],
        limits: tuple[int, int, int],
    ) -> tuple[int, dict[str, Json]]:
        """UpdateImageMetadata: merge `pairs` into each workspace image's metadata.

        Return (200 or 207, ImageMetadataUpdateSummary). The shape is recorded
        (azure-sdk-for-net TrainingTests/UpdateImageMetadata.json); inferred: pairs are merged
        (an "update"), an image that would exceed `limits[0]` pairs or is not in the
        workspace gets its own error status and the answer is 207 (the spec's statuses).
        """
        with self.lock:
            project = self._project(project_id)
            _check_metadata(pairs, limits)
            results: list[dict[str, Json]] = []
            for image_id in dict.fromkeys(i.lower() for i in image_ids):
                index = project.image_index(image_id)
                if index is None or not project.workspace.has(index):
                    results.append(
                        {"imageId": image_id, "status": "ErrorImageNotFound", "metadata": None}
                    )
                    continue
                merged = {**project.metadata.get(index, {}), **pairs}
                if len(merged) > limits[0]:
                    results.append(
                        {"imageId": image_id, "status": "ErrorLimitExceed", "metadata": None}
                    )
                    continue
                project.metadata[index] = merged
                results.append({"imageId": image_id, "status": "OK", "metadata": dict(merged)})
            ok = all(r["status"] == "OK" for r in results)
            return (200 if ok else 207), {"isBatchSuccessful": ok, "images": results}

    def api_create_images(
        self, project_id: str, batch: Json, limits: tuple[int, int, int], links: Links
    ) -> tuple[int, dict[str, Json]]:
        """CreateImagesFromFiles: new workspace images with tags and metadata.

        Return (200, ImageCreateSummary). The bytes sent are not kept: the emulator serves
        generated bytes for every image, as for seeded ones; regions follow the tags (a
        region's tag tags its image; the boxes shown are the emulator's own). Limits (spec):
        64 images and 20 tags per batch; regions only in object detection projects, each
        with a tag and a box inside the image (BadRequestImageRegions; inferred from the
        spec's code list and Microsoft's docs: coordinates are fractions of the image).
        """
        if not isinstance(batch, dict) or not isinstance(batch.get("images"), list):
            raise CvError(400, "BadRequestImageBatch", "The batch must list images.")
        entries = batch["images"]
        if not entries or len(entries) > 64:
            raise CvError(400, "BadRequestImageBatch", "A batch holds 1 to 64 images.")
        metadata = batch.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CvError(400, "BadRequestImageBatch", "metadata must map strings to strings.")
        if metadata:
            _check_metadata(metadata, limits)
        if len(metadata) > limits[0]:
            # Inferred: the batch is refused as a whole (no per-image status fits better).
            raise CvError(400, "BadRequestImageBatch", f"At most {limits[0]} metadata pairs.")
        with self.lock:
            project = self._project(project_id)
            results = []
            for entry in entries:
                if not isinstance(entry, dict):
                    raise CvError(400, "BadRequestImageBatch", "Each image must be an object.")
                tag_ids = [*(batch.get("tagIds") or []), *(entry.get("tagIds") or [])]
                tag_ids += _region_tags(entry.get("regions"), project.detection)
                if len(tag_ids) > 20:
                    raise CvError(400, "BadRequestImageBatch", "At most 20 tags per image.")
                mask = 0
                for tag_id in tag_ids:
                    mask |= 1 << self._tag_slot(project, str(tag_id), project.workspace)
                masks = project.workspace.masks
                masks.extend([None] * (project.slots - len(masks)))
                index = project.slots
                masks.append(mask)
                project.slots += 1
                if metadata:
                    project.metadata[index] = dict(metadata)
                project.workspace.touch()
                results.append(
                    {
                        "sourceUrl": str(entry.get("name") or ""),
                        "status": "OK",
                        "image": self._image_json(project, project.workspace, index, links),
                    }
                )
            return 200, {"isBatchSuccessful": True, "images": results}

    def api_images_by_ids(
        self, project_id: str, image_ids: Sequence[str], iteration_id: str | None, links: Links
    ) -> list[dict[str, Json]]:
        """GetImagesByIds: the images found, in request order; unknown ids are skipped."""
        with self.lock:
            project = self._project(project_id)
            image_set = self._set(project, iteration_id)
            result = []
            for image_id in dict.fromkeys(i.lower() for i in image_ids):
                index = project.image_index(image_id)
                if index is not None and image_set.has(index):
                    result.append(self._image_json(project, image_set, index, links))
            return result

    def api_delete_images(
        self,
        project_id: str,
        image_ids: Sequence[str],
        *,
        all_images: bool,
        all_iterations: bool,
        delay: Callable[[str, str | None], float],
    ) -> list[str]:
        """DeleteImages; return the ids this call removed from somewhere (each once).

        A plain delete (204) empties the workspace at once. An asynchronous one (202:
        `all_images` or `all_iterations`) removes from the workspace after
        `delay(project_id, None)` seconds and, with `all_iterations`, from each iteration's
        snapshot after `delay(project_id, iteration_id)` seconds (0: at once). Ids removed
        from nowhere (unknown, already gone, already pending there) are not returned.
        """
        with self.lock:
            project = self._project(project_id)
            if all_images:
                indices = list(range(project.slots))
            else:
                indices = []
                for image_id in dict.fromkeys(i.lower() for i in image_ids):
                    index = project.image_index(image_id)
                    if index is not None:
                        indices.append(index)
            asynchronous = all_images or all_iterations
            keys = [""] + (list(project.iterations) if all_iterations else [])
            removed: set[int] = set()
            now = self.clock()
            for key in keys:
                image_set = project.image_set(key)
                assert image_set is not None
                lag = delay(project.id, key or None) if asynchronous else 0.0
                waiting = project.pending_in(key)
                batch = [i for i in indices if image_set.has(i) and i not in waiting]
                if not batch:
                    continue
                removed.update(batch)
                if lag <= 0:
                    for index in batch:
                        image_set.remove(index)
                else:
                    project.pending.append((now + lag, key, tuple(batch)))
            return [project.image_guid(i) for i in indices if i in removed]

    def api_query_predictions(
        self, project_id: str, query: dict[str, Json], links: Links
    ) -> dict[str, Json]:
        """QueryPredictions: one page plus the token for the next (continuation "" at the end)."""
        with self.lock:
            project = self._project(project_id)
            token = _QueryToken.parse(query)
            selected = [
                p
                for p in project.predictions.values()
                if token.matches(p) and (token.iteration_id in (None, p.iteration_id))
            ]
            newest = token.order_by != "Oldest"
            selected.sort(key=_prediction_key, reverse=newest)
            after = token.after
            if after is not None:
                if newest:
                    selected = [p for p in selected if _prediction_key(p) < after]
                else:
                    selected = [p for p in selected if _prediction_key(p) > after]
            page = selected[: token.page_size]
            continuation = ""
            if len(selected) > len(page):
                continuation = _encode_continuation(*_prediction_key(page[-1]))
            return {
                "token": token.echo(project, continuation),
                "results": [self._prediction_json(project, p, links) for p in page],
            }

    def api_delete_predictions(self, project_id: str, ids: Sequence[str]) -> list[str]:
        """DeletePrediction; return the ids actually removed (unknown ids are ignored)."""
        with self.lock:
            project = self._project(project_id)
            removed = []
            for prediction_id in dict.fromkeys(i.lower() for i in ids):
                if project.predictions.pop(prediction_id, None) is not None:
                    removed.append(prediction_id)
            return removed

    # ----------------------------------------------------------------- blobs

    def blob(self, relpath: str, sig: str | None, se: str | None) -> tuple[bytes, str] | None:
        """Return (bytes, content type) for a signed blob URL's path, or None (404).

        Raises PermissionError when the signature is missing or wrong, or `se` missing or
        edited, and LinkExpired after `se` (storage's 403 either way).
        """
        if sig is None or se is None or not hmac.compare_digest(sig, self._sign(relpath, se)):
            raise PermissionError("signature mismatch")
        expiry = datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        now = self.now()
        if now > expiry:
            raise LinkExpired(expiry, now)
        return self.artifact(None, relpath)

    def artifact(self, project_id: str | None, relpath: str) -> tuple[bytes, str] | None:
        """Return (bytes, content type) for a blob path (of `project_id` when given), or None."""
        with self.lock:
            match = _BLOB_IMAGE.match(relpath)
            if match:
                project = self._blob_project(match.group(1), project_id)
                if project is None:
                    return None
                guid = str(uuid.UUID(match.group(3)))
                index = project.image_index(guid)
                if index is None or not project.exists(index):
                    return None
                width, height = project.image_size(index)
                kind = match.group(2)
                plan = (guid, kind, width, height)
                return self._image_bytes(*plan), "image/png"
            match = _BLOB_PREDICTION.match(relpath)
            if match:
                project = self._blob_project(match.group(1), project_id)
                guid = str(uuid.UUID(match.group(3)))
                if project is None or guid not in project.predictions:
                    return None
                return self._image_bytes(guid, match.group(2), 800, 600), "image/png"
            match = _BLOB_EXPORT.match(relpath)
            if match:
                project = self._blob_project(match.group(1), project_id)
                if project is None:
                    return None
                iteration = project.iterations.get(str(uuid.UUID(match.group(2))))
                if iteration is None:
                    return None
                self._advance(iteration)
                for export in iteration.exports:
                    if export.status != "Done":
                        continue
                    if self._export_relpath(project, iteration, export) == relpath:
                        names = [project.tag_defs[s].name for s in sorted(iteration.images.tags)]
                        return self._export_zip(relpath, names), "application/zip"
            return None

    def _blob_project(self, phex: str, project_id: str | None) -> _Project | None:
        project = self._projects.get(str(uuid.UUID(phex)))
        if project is None or (project_id is not None and project.id != project_id.lower()):
            return None
        self._settle(project)
        return project

    def _image_bytes(self, key: str, kind: str, width: int, height: int) -> bytes:
        if kind == "o":
            return png(width, height, f"{key}/o", self.image_bytes_target)
        limit, share = (512, 2) if kind == "i" else (128, 8)
        scale = min(1.0, limit / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return png(*size, f"{key}/{kind}", self.image_bytes_target // share)

    def _export_zip(self, relpath: str, labels: list[str]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in (
                ("labels.txt", "\n".join(labels).encode("utf-8") + b"\n"),
                (
                    "model.pb",
                    hashlib.shake_256(relpath.encode()).digest(4 * self.image_bytes_target),
                ),
            ):
                info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        return buffer.getvalue()

    def original_image_bytes(self, image_id: str) -> bytes:
        """Return the bytes the original-image blob of `image_id` serves (KeyError if none)."""
        with self.lock:
            for project in self._projects.values():
                index = project.image_index(image_id)
                if index is not None:
                    width, height = project.image_size(index)
                    return self._image_bytes(str(uuid.UUID(image_id)), "o", width, height)
            raise KeyError(image_id)


def _page(found: Sequence[int], *, newest_first: bool, skip: int, take: int) -> Sequence[int]:
    """One offset page of `found` (oldest first), newest first when asked."""
    if newest_first:
        end = len(found) - skip
        return found[max(0, end - take) : max(0, end)][::-1]
    return found[skip : skip + take]


def _check_metadata(pairs: Json, limits: tuple[int, int, int]) -> None:
    """Raise CvError unless `pairs` is a string map within the key and value lengths.

    Codes from the spec's list (BadRequestImageMetadataKey / ...Value); their use here is
    inferred.
    """
    if not isinstance(pairs, dict) or not pairs:
        raise CvError(400, "BadRequestRequiredParamIsNull", "The metadata body is required.")
    _, key_limit, value_limit = limits
    for key, value in pairs.items():
        if not key or len(key) > key_limit:
            raise CvError(
                400,
                "BadRequestImageMetadataKey",
                f"A metadata key must have 1 to {key_limit} characters.",
            )
        if not isinstance(value, str) or len(value) > value_limit:
            raise CvError(
                400,
                "BadRequestImageMetadataValue",
                f"A metadata value must be a string of at most {value_limit} characters.",
            )


def _prediction_key(prediction: _Prediction) -> tuple[str, str]:
    """Sort key of a prediction; also what a continuation token carries."""
    return prediction.created.strftime("%Y%m%d%H%M%S%f"), prediction.id


def _encode_continuation(created: str, prediction_id: str) -> str:
    raw = json.dumps([created, prediction_id]).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_continuation(text: str) -> tuple[str, str]:
    try:
        created, prediction_id = json.loads(base64.urlsafe_b64decode(text.encode("ascii")))
        return str(created), str(prediction_id)
    except (ValueError, TypeError) as exc:
        raise CvError(
            400, "BadRequestPredictionInvalidQueryParameters", "Invalid continuation token."
        ) from exc


def _parse_time(value: Json, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise CvError(
            400, "BadRequestPredictionInvalidQueryParameters", f"Invalid {name}."
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_MAX_PREDICTION_PAGE = 256
_DEFAULT_PREDICTION_PAGE = 50


@dataclass(frozen=True)
class _QueryToken:
    raw: dict[str, Json]
    order_by: str
    page_size: int
    tags: tuple[tuple[str, float, float], ...]
    iteration_id: str | None
    start: datetime | None
    end: datetime | None
    after: tuple[str, str] | None

    @classmethod
    def parse(cls, query: dict[str, Json]) -> _QueryToken:
        def bad(problem: str) -> CvError:
            return CvError(400, "BadRequestPredictionInvalidQueryParameters", problem)

        if not isinstance(query, dict):
            raise bad("The query must be a JSON object.")
        order_by = query.get("orderBy") or "Newest"
        if order_by not in ("Newest", "Oldest", "Suggested"):
            raise bad("Invalid orderBy.")
        max_count = query.get("maxCount") or 0
        if not isinstance(max_count, int) or isinstance(max_count, bool) or max_count < 0:
            raise bad("Invalid maxCount.")
        if max_count > _MAX_PREDICTION_PAGE:
            raise CvError(
                400,
                "BadRequestPredictionResultsExceededCount",
                f"maxCount is limited to {_MAX_PREDICTION_PAGE}.",
            )
        raw_tags = query.get("tags") or []
        if not isinstance(raw_tags, list):
            raise bad("Invalid tags.")
        if len(raw_tags) > 2:
            raise CvError(
                400, "BadRequestPredictionTagsExceededCount", "A query combines at most 2 tags."
            )
        tags = []
        for tag in raw_tags:
            if not isinstance(tag, dict) or not isinstance(tag.get("id"), str):
                raise bad("Invalid tag filter.")
            low, high = tag.get("minThreshold", 0.0), tag.get("maxThreshold", 1.0)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
                raise bad("Invalid tag thresholds.")
            tags.append((tag["id"].lower(), float(low), float(high)))
        iteration_id = query.get("iterationId")
        if iteration_id is not None and not isinstance(iteration_id, str):
            raise bad("Invalid iterationId.")
        continuation = query.get("continuation") or ""
        if not isinstance(continuation, str):
            raise bad("Invalid continuation.")
        return cls(
            raw=query,
            order_by=order_by,
            page_size=max_count or _DEFAULT_PREDICTION_PAGE,
            tags=tuple(tags),
            iteration_id=iteration_id.lower() if iteration_id else None,
            start=_parse_time(query.get("startTime"), "startTime"),
            end=_parse_time(query.get("endTime"), "endTime"),
            after=_decode_continuation(continuation) if continuation else None,
        )

    def matches(self, prediction: _Prediction) -> bool:
        if self.start is not None and prediction.created < self.start:
            return False
        if self.end is not None and prediction.created > self.end:
            return False
        probabilities = {tag_id: prob for tag_id, _, prob, _ in prediction.results}
        return all(
            low <= probabilities.get(tag_id, -1.0) <= high for tag_id, low, high in self.tags
        )

    def echo(self, project: _Project, continuation: str) -> dict[str, Json]:
        session = self.raw.get("session") or f"1:{project.salt % 1_000_000}"
        return {
            "session": session,
            "continuation": continuation,
            "maxCount": self.raw.get("maxCount") or 0,
            "orderBy": self.order_by,
            "tags": [
                {"id": tag_id, "minThreshold": low, "maxThreshold": high}
                for tag_id, low, high in self.tags
            ],
            "iterationId": self.iteration_id,
            "startTime": self.raw.get("startTime"),
            "endTime": self.raw.get("endTime"),
            "application": self.raw.get("application") or "",
        }


def _region_tags(regions: Json, detection: bool) -> list[str]:
    """Return the tag ids of an ImageFileCreateEntry's regions; raise CvError when invalid."""
    if regions is None or regions == []:
        return []
    if not detection or not isinstance(regions, list):
        raise CvError(400, "BadRequestImageRegions", "Regions need an object detection project.")
    tags = []
    for region in regions:
        box: list[float] = []
        if isinstance(region, dict):
            values = [region.get(k) for k in ("left", "top", "width", "height")]
            box = [float(v) for v in values if isinstance(v, int | float)]
        if (
            not isinstance(region, dict)
            or not isinstance(region.get("tagId"), str)
            or len(box) != 4
            or not all(0 <= v <= 1 for v in box)
            or box[0] + box[2] > 1
            or box[1] + box[3] > 1
        ):
            raise CvError(
                400, "BadRequestImageRegions", "A region needs a tag and a box in [0, 1]."
            )
        tags.append(str(region["tagId"]))
    return tags
