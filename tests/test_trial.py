"""bot.trial, `python -m bot trial`: the live trial, run in CI against the emulator.

The end-to-end test starts the Custom Vision emulator (Azure-like defaults, every answer and
request held to the spec) and runs `python -m bot trial` as a user does, as a subprocess with
only CUSTOM_VISION_* set; seeded projects stand for the user's real data and must come out
untouched. The failure test injects a fault mid-trial and sees the scratch project gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from bot.training import TrainingClient
from bot.trial import (
    ASSUMPTIONS,
    CallCounter,
    Trial,
    TrialRefused,
    compare,
    require_scratch,
    run_trial,
    scratch_name,
)
from emulators.customvision import CustomVisionEmulator, Faults, Seed
from tests.spec_schema import SpecChecker

KEY = "trial-test-key-5Qz8"
ROOT = Path(__file__).resolve().parent.parent
PREDICTION = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/x"
P = "6f1d8a2e-3b4c-4d5e-8f90-a1b2c3d4e5f6"


def test_require_scratch_refuses_every_project_but_the_one_created() -> None:
    assert require_scratch(P, P) == P
    assert require_scratch(P.upper(), P) == P.upper()  # GUIDs are case-insensitive
    other = "00000000-0000-0000-0000-000000000001"
    with pytest.raises(TrialRefused) as refused:
        require_scratch(other, P)
    assert refused.value.user_message == (
        f"The trial refuses to delete in project {other}: it only deletes in the scratch "
        f"project it created in this run ({P})."
    )
    with pytest.raises(TrialRefused):
        require_scratch(P, None)  # nothing created yet: nothing may be deleted


def test_scratch_name_says_what_it_is_and_differs_per_run() -> None:
    now = datetime(2026, 12, 2, 13, 5, 9, tzinfo=UTC)
    assert scratch_name(now, "ab12cd34") == "cv-dsr-bot-trial-20261202T130509Z-ab12cd34"
    assert scratch_name(now) != scratch_name(now)


def test_trial_assumptions_are_the_emulators_defaults() -> None:
    defaults = {f.name: f.default for f in fields(Faults)}
    assert ASSUMPTIONS["link_lifetime_seconds"] == defaults["link_lifetime"]
    assert ASSUMPTIONS["workspace_delete_lag_seconds"] == defaults["async_delete_workspace_delay"]
    assert ASSUMPTIONS["snapshot_delete_lag_seconds"] == defaults["async_delete_delay"]
    assert ASSUMPTIONS["unpublish_unpublished"] == defaults["unpublish_unpublished"]
    assert ASSUMPTIONS["delete_published"] == defaults["delete_published"]
    assert defaults["training_iteration_changes"] == "refused"


def test_compare_says_which_assumptions_held() -> None:
    rows = compare(
        {
            "link_lifetime_seconds": 3600.0,
            "workspace_delete_lag_seconds": 1.5,
            "snapshot_delete_lag_seconds": 40.0,
            "unpublish_unpublished": {"status": 204, "code": None},
            "delete_published": {"status": 400, "code": "BadRequestIterationIsPublished"},
        }
    )
    assert [(r["assumption"], r["measured"], r["held"]) for r in rows] == [
        ("link_lifetime_seconds", 3600.0, False),
        ("workspace_delete_lag_seconds", 1.5, True),
        ("snapshot_delete_lag_seconds", 40.0, False),
        ("unpublish_unpublished", "204", False),
        ("delete_published", "BadRequestIterationIsPublished", True),
        ("unpublish_while_training", None, None),
        ("reused_link_downloads", None, None),
    ]


def _state(emu: CustomVisionEmulator, projects: list[str]) -> dict[str, Any]:
    """Everything of the seeded projects a trial could have touched."""
    data = emu.data
    return {
        p: {
            "images": data.image_ids(p),
            "tags": data.tag_ids(p),
            "iterations": {
                i: (data.image_ids(p, i), data.publish_name(p, i)) for i in data.iteration_ids(p)
            },
            "predictions": data.prediction_ids(p),
        }
        for p in projects
    }


SEED = Seed(projects=3, iterations=2, tags=3, images=40, predictions=6, image_bytes=256)


@pytest.mark.parametrize("real_quirks", [True, False], ids=["azure-like", "spec"])
def test_trial_runs_as_users_run_it_and_touches_nothing_else(
    tmp_path: Path, real_quirks: bool
) -> None:
    # Azure-like: the emulator's defaults (nulls, zone-less timestamps), which the spec
    # refuses, and a training iteration (recorded with nulls the spec refuses too); spec:
    # every answer and request held to the v3.3 spec, the training done at once.
    checker = SpecChecker(strict=True, check_requests=True)
    faults = Faults(train_seconds=0.5 if real_quirks else 0.0, real_quirks=real_quirks)
    with CustomVisionEmulator(KEY, seed=SEED, faults=faults) as emu:
        if not real_quirks:
            emu.hooks.append(checker)
        seeded = emu.data.project_ids()
        before = _state(emu, seeded)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CUSTOM_"))}
        env.update(CUSTOM_VISION_ENDPOINT=emu.endpoint, CUSTOM_VISION_TRAINING_KEY=KEY)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bot",
                "--env-file",
                str(tmp_path / "no.env"),
                "trial",
                "--output",
                str(tmp_path / "out"),
                "--train",
                "--prediction-resource-id",
                PREDICTION,
                "--reuse-delay",
                "0.2",
                "--poll",
                "0.05",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert emu.data.project_ids() == seeded
        assert _state(emu, seeded) == before
        parts = [c.path.lower().split("/") for c in emu.calls]
        touched = {x[5] for x in parts if len(x) > 5 and x[4] == "projects"}
    checker.assert_clean()
    assert real_quirks or checker.checked["CreateImagesFromFiles"] == 1
    (report_file,) = (tmp_path / "out").glob("*/trial-report.json")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert KEY not in report_file.read_text(encoding="utf-8")
    assert "sig=" not in report_file.read_text(encoding="utf-8")  # no working link
    assert report["failed"] is False
    assert report["project_name"].startswith("cv-dsr-bot-trial-")
    assert touched == {report["project_id"]}  # every project call went to the scratch one
    assert [s["step"] for s in report["steps"]] == [
        "create project",
        "create tags and images",
        "link lifetime",
        "train and publish",
        "202 lag",
        "reused link",
        "unpublish twice",
        "bot export",
        "bot deletion",
        "delete scratch project",
    ]
    assert all(s["ok"] for s in report["steps"])
    export = next(s for s in report["steps"] if s["step"] == "bot export")
    assert export["status"] == "done" and any(f.endswith(".zip") for f in export["files"])
    deletion = next(s for s in report["steps"] if s["step"] == "bot deletion")
    assert deletion["status"] == "done"
    assert deletion["receipt"]["note"] == "18 images deleted and verified gone."
    assert report["measured"]["scratch_project_deleted"] is True
    # The trial's own calls (43-45): the bot export's file downloads run in its download
    # process, outside the trial's session.
    assert report["calls"]["total"] > 40 and report["calls"]["throttled"] == 0
    # On the emulator every assumption holds: it is what the assumptions describe.
    held: dict[str, bool | None] = dict.fromkeys(ASSUMPTIONS, True)
    if not real_quirks:
        held["unpublish_while_training"] = None  # never seen training: not measured
    assert {r["assumption"]: r["held"] for r in report["assumptions"]} == held
    assert "Scratch project deleted." in done.stdout
    assert "held: snapshot_delete_lag_seconds" in done.stdout


def test_trial_refuses_to_start_without_custom_vision_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CUSTOM_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", str(tmp_path / "no.env"), "trial"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "CUSTOM_VISION_ENDPOINT is missing" in done.stderr
    assert "SLACK" not in done.stderr  # Slack is not needed for the trial
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("fault", "failed_step"),
    [
        ({"DeleteImages": 1}, "bot deletion"),  # the lag probe's call works, the bot's fails
        ({"ExportIteration": 0, "GetImagesByIds": 0}, "202 lag"),
        ({"CreateImagesFromFiles": 0}, "create tags and images"),
    ],
)
def test_trial_deletes_the_scratch_project_when_a_step_fails(
    tmp_path: Path, fault: dict[str, int], failed_step: str
) -> None:
    with CustomVisionEmulator(KEY, seed=SEED, faults=Faults(fail_after=fault)) as emu:
        seeded = emu.data.project_ids()
        before = _state(emu, seeded)
        with pytest.raises(Exception):  # noqa: B017 - whichever error the step met
            run_trial(
                emu.endpoint,
                KEY,
                tmp_path,
                reuse_delay=0.0,
                poll=0.05,
                verify_timeout=5.0,
                tps=1000.0,
                client_options={"max_attempts": 2, "backoff_base": 0.0},
            )
        assert emu.data.project_ids() == seeded
        assert _state(emu, seeded) == before
        assert len(emu.calls_to("CreateProject")) == 1
        assert emu.calls_to("DeleteProject")[-1].status == 204
    report = json.loads((tmp_path / "trial-report.json").read_text(encoding="utf-8"))
    assert report["failed"] is True
    failed = [s["step"] for s in report["steps"] if not s["ok"]]
    assert failed == [failed_step]
    assert report["steps"][-1]["step"] == "delete scratch project"
    assert report["measured"]["scratch_project_deleted"] is True


def test_trial_probes_refuse_any_project_but_the_scratch_one(tmp_path: Path) -> None:
    with CustomVisionEmulator(KEY, seed=SEED) as emu:
        seeded = emu.data.project_ids()
        client = TrainingClient(emu.endpoint, KEY, tps=1000.0)
        with requests.Session() as session, client:
            trial = Trial(
                client, session, client.endpoint, KEY, tmp_path, 0.0, False, None, 1.0, 0.01
            )
            trial.project_id = P
            iteration = emu.data.iteration_ids(seeded[0])[0]
            with pytest.raises(TrialRefused):
                trial._probe("DELETE", f"/projects/{seeded[0]}/iterations/{iteration}")
        assert emu.calls_to("DeleteIteration") == []


def test_call_counter_peak_is_the_busiest_second() -> None:
    counter = CallCounter(times=[0.0, 0.2, 0.9, 1.0, 1.05, 1.1, 1.95, 3.0])
    assert counter.peak() == 5  # 0.2 .. 1.1
    assert CallCounter().peak() == 0
