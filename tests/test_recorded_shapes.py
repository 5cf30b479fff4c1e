"""The bot's Training API client reads what the live service really sends, not only the spec.

The answers below are our own, written in the shapes of responses recorded from the live
service by Microsoft's .NET SDK tests (azure-sdk-for-net, sdk/cognitiveservices/
Vision.CustomVision.Training/tests/SessionRecords/TrainingTests/): ids, names and links are
made up; what is kept is what breaks the spec:
- UpdateImageMetadata.json / GetImagesAndCount.json: image and tag timestamps with seven
  fractional digits and no time zone; no "regions" or "metadata" key at all; SAS links with
  `se` a day after the answer.
- TrainAndPublishProject.json: an iteration in training without "trainedAt" and with null
  exportableTo, domainId, classificationType, publishName, originalPublishResourceId; a
  completed, unpublished one with null publishName.
- ExportTests.json: an export "Exporting" with downloadUri and flavor null.
- Project answers with a null thumbnailUri (NOTES-customvision.md).
They reach the client through a transport adapter (no network), as the service sends them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from bot.training import TrainingClient

ENDPOINT = "https://recorded.invalid"
BASE = "/customvision/v3.3/training"
P = "3f0c1a52-77d4-4c38-9a0e-5d2b8e6f1a90"
TRAINED = "8b6e2f14-0c3d-4a57-b1e9-2d7c5a9f3e01"
TRAINING = "c41d9e70-5b2a-4f86-8e13-6a0f2c7b9d45"
IMAGE = "5a7e3c19-2d84-4b06-9f51-e3c8a1b6d270"
TAG = "e29b4f07-6c1a-4d38-a5e2-9b7d0c3f8a16"
SAS = "?sv=2017-04-17&sr=b&sig=bm90LWEtcmVhbC1zaWduYXR1cmU%3D&se=2026-01-02T10%3A00%3A00Z&sp=r"

ANSWERS: dict[str, Any] = {
    f"{BASE}/projects/{P}": {
        "id": P,
        "name": "shapes",
        "description": "",
        "settings": {
            "domainId": "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31",
            "classificationType": "Multilabel",
            "targetExportPlatforms": [],
            "useNegativeSet": True,
            "detectionParameters": None,
            "imageProcessingSettings": None,
        },
        "created": "2026-01-01T09:00:00.123",
        "lastModified": "2026-01-01T09:30:00.4567891",
        "thumbnailUri": None,
        "drModeEnabled": False,
        "status": "Succeeded",
    },
    f"{BASE}/projects/{P}/iterations": [
        {
            "id": TRAINED,
            "name": "Iteration 1",
            "status": "Completed",
            "created": "2026-01-01T09:05:04.586Z",
            "lastModified": "2026-01-01T09:05:13.139Z",
            "trainedAt": "2026-01-01T09:05:12.403Z",
            "projectId": P,
            "exportable": False,
            "exportableTo": [],
            "domainId": "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31",
            "classificationType": "Multilabel",
            "trainingType": "Regular",
            "reservedBudgetInHours": 0,
            "trainingTimeInMinutes": 1,
            "publishName": None,
            "originalPublishResourceId": None,
        },
        {
            "id": TRAINING,
            "name": "Iteration 2",
            "status": "Training",
            "created": "2026-01-01T09:06:06.676Z",
            "lastModified": "2026-01-01T09:06:15.508Z",
            "projectId": P,
            "exportable": False,
            "exportableTo": None,
            "domainId": None,
            "classificationType": None,
            "trainingType": "Regular",
            "reservedBudgetInHours": 0,
            "trainingTimeInMinutes": 0,
            "publishName": None,
            "originalPublishResourceId": None,
        },
    ],
    f"{BASE}/projects/{P}/iterations/{TRAINED}/export": [
        {
            "platform": "TensorFlow",
            "status": "Exporting",
            "downloadUri": None,
            "flavor": None,
            "newerVersionAvailable": False,
        }
    ],
    f"{BASE}/projects/{P}/images": [
        {
            "id": IMAGE,
            "created": "2026-01-01T09:01:45.5635527",
            "width": 900,
            "height": 1600,
            "resizedImageUri": f"https://blob.invalid/i-1/i-{IMAGE}{SAS}",
            "thumbnailUri": f"https://blob.invalid/i-1/t-{IMAGE}{SAS}",
            "originalImageUri": f"https://blob.invalid/i-1/i-{IMAGE}{SAS}",
            "tags": [{"tagId": TAG, "tagName": "Tag2", "created": "2026-01-01T09:01:45.5789318"}],
        }
    ],
}


class RecordedAnswers(BaseAdapter):
    """A transport that answers GETs from ANSWERS (404 for anything else)."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        response = requests.Response()
        path = (request.path_url or "").split("?")[0]
        body = ANSWERS.get(path)
        response.status_code = 200 if body is not None else 404
        response._content = json.dumps(body).encode() if body is not None else b""
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
def client() -> TrainingClient:
    session = requests.Session()
    session.mount("https://", RecordedAnswers())
    return TrainingClient(ENDPOINT, "recorded-shapes-key", session=session)


def test_recorded_project_with_nulls_parses(client: TrainingClient) -> None:
    project = client.get_project(P)
    assert project.thumbnail_uri is None
    assert project.last_modified == "2026-01-01T09:30:00.4567891"
    assert project.to_dict() == ANSWERS[f"{BASE}/projects/{P}"]


def test_recorded_iterations_in_training_and_unpublished_parse(client: TrainingClient) -> None:
    trained, training = client.get_iterations(P)
    assert (trained.status, trained.is_published, trained.publish_name) == (
        "Completed",
        False,
        None,
    )
    assert (training.status, training.trained_at, training.exportable_to) == ("Training", None, ())
    assert (training.domain_id, training.is_published) == (None, False)


def test_recorded_queued_export_parses_without_a_link(client: TrainingClient) -> None:
    (export,) = client.get_exports(P, TRAINED)
    assert (export.status, export.download_uri, export.flavor) == ("Exporting", None, None)


def test_recorded_image_without_regions_metadata_or_zone_parses(client: TrainingClient) -> None:
    (image,) = client.get_images_page(P, take=1)
    assert image.created == "2026-01-01T09:01:45.5635527"
    assert image.tags[0].created == "2026-01-01T09:01:45.5789318"
    assert (image.regions, dict(image.metadata)) == ((), {})
    assert image.to_dict() == ANSWERS[f"{BASE}/projects/{P}/images"][0]
