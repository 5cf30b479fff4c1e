"""The benchmarks at tiny sizes, so they cannot rot: each runs end to end and reports sane figures.

No timing is asserted (the machine is shared): only that every benchmark drives the real bot
through its surfaces, counts what it should, and yields a well-formed row set and table; and
that several runs are summarized as medians with their spread, the targets judged on the
median.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import (
    ack,
    auditlog,
    burst,
    deletion,
    export,
    memory,
    project,
    report,
    resources,
    search,
)
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, summarize

ROOT = Path(__file__).resolve().parent.parent


def well_formed(result: Result, key: str) -> None:
    assert result.key == key
    assert result.title and result.setup
    assert result.rows and all(row.measure and row.value for row in result.rows)
    assert result.checks, "every benchmark checks at least one target"
    assert all(isinstance(row.ok, bool) for row in result.checks)
    assert all(value >= 0 for value in result.figures.values()), result.figures
    table = report.render([result], report.machine(), smoke=True)
    body = [line for line in table.splitlines() if line.startswith("| ")]
    assert body[0] == "| Benchmark | Measure | Median | Spread | Target | Result |"
    assert len(body) == 1 + len(result.rows)
    assert all(line.count(" | ") == 5 for line in body)
    assert f"**{result.title}**" in table


def test_bench_export_smoke_downloads_every_image_and_runs_the_bare_fetch_and_baseline() -> None:
    result = export.BENCHMARK.run()
    well_formed(result, "export")
    f = result.figures
    size = export.SIZES["smoke"]
    assert (f["images"], f["large_images"]) == (size.images, size.large)
    assert f["baseline_images"] == f["images"]  # under SEQUENTIAL_IMAGES: all of them
    assert f["baseline_pages"] == 2  # one short page of tagged, one of untagged images
    assert f["baseline_s"] == f["baseline_measured_s"] > 0
    for p in ("", "large_"):
        assert f[p + "downloads"] >= f[p + "images"]
        assert f[p + "api_calls"] >= f[p + "pages"] >= 1
        assert f[p + "bound_s"] == max(f[p + "api_bound_s"], f[p + "download_bound_s"])
        assert f[p + "bare_pages"] == f[p + "images"] // 256 + 1
        assert f[p + "bot_s"] > 0 and f[p + "bare_s"] > 0
        assert f[p + "bot_over_bare"] == f[p + "bot_s"] / f[p + "bare_s"]
        assert f[p + "bot_cpu_per_1000"] > 0 and f[p + "bare_cpu_per_1000"] > 0
        # The download process ran, ended and was reaped before the request was done.
        assert 0 < f[p + "fetcher_cpu_per_1000"] < f[p + "bot_cpu_per_1000"]
        assert f[p + "peak_rss_mb"] > 10


def test_bench_memory_smoke_measures_a_fresh_process_per_export() -> None:
    result = memory.BENCHMARK.run()
    well_formed(result, "memory")
    f = result.figures
    assert (f["small_images"], f["large_images"], f["files_images"]) == (100, 600, 60)
    assert f["small_mb"] >= f["idle_mb"] > 10
    assert f["growth_mb"] == f["large_mb"] - f["small_mb"]
    assert (f["pages_small_images"], f["pages_large_images"]) == (50, 600)
    assert f["pages_growth_mb"] == max(0.0, f["pages_large_mb"] - f["pages_small_mb"])
    assert f["pages_large_s"] > 0


def test_bench_deletion_smoke_erases_a_tags_images_from_every_snapshot_phase_by_phase() -> None:
    result = deletion.BENCHMARK.run()
    well_formed(result, "deletion")
    f = result.figures
    assert f["snapshots"] == deletion.seed("smoke").iterations
    assert f["images"] > 0
    assert f["batches"] == -(-f["images"] // 256)
    for phase in ("preview", "delete", "verify"):
        assert f[f"{phase}_calls"] > 0
        assert f[f"{phase}_bound_s"] >= f[f"{phase}_calls"] / deletion.TPS
        assert f[f"{phase}_s"] > 0
    assert f["whole_bound_s"] == pytest.approx(
        f["preview_bound_s"] + f["delete_bound_s"] + f["verify_bound_s"]
    )
    assert f["throttled"] >= 0


def test_bench_project_smoke_exports_a_full_size_shaped_project_against_its_least_calls() -> None:
    result = project.BENCHMARK.run()
    well_formed(result, "project")
    f = result.figures
    assert (f["images"], f["snapshots"], f["small_images"]) == (200, 20, 50)
    assert f["snapshot_only"] > 0
    # Workspace and 20 snapshots of 40 to 200 images: one short page each.
    assert f["pages"] >= 21
    assert f["calls"] >= f["least_calls"] == 2 + 2 * 20 + 21 + 21 + 1
    assert f["bound_s"] == f["least_calls"] / project.SMOKE_TPS
    assert f["growth_mb"] == max(0.0, f["peak_mb"] - f["small_peak_mb"])


def test_bench_ack_smoke_times_every_command_for_both_apps() -> None:
    result = ack.BENCHMARK.run()
    well_formed(result, "ack")
    f = result.figures
    assert f["commands"] == ack.SIZES["smoke"].commands
    for app in ("bot", "bolt"):
        assert 0 < f[f"{app}_p50_s"] <= f[f"{app}_p99_s"] <= f[f"{app}_max_s"]
        assert 0 <= f[f"{app}_missed"] <= f["commands"]


def test_bench_burst_smoke_mirrors_every_event_at_slacks_pace() -> None:
    result = burst.BENCHMARK.run()
    well_formed(result, "burst")
    f = result.figures
    assert f["commands"] == burst.SIZES["smoke"].commands
    assert 0 < f["p50_s"] <= f["p99_s"] <= f["max_s"]
    assert 0 <= f["missed"] <= f["commands"]
    assert f["rate_limited"] == 0
    # Two thirds of the commands are refusals, each one audit event; all are in the mirror,
    # several to a message.
    assert f["events"] >= burst.SIZES["smoke"].commands * 2 / 3
    assert f["mirror_messages"] < f["events"]


def test_bench_audit_smoke_verifies_the_whole_chain() -> None:
    result = auditlog.BENCHMARK.run()
    well_formed(result, "audit")
    assert result.figures["events"] == auditlog.EVENTS["smoke"]
    assert result.figures["verify_s"] > 0 and result.figures["read_s"] > 0


def test_bench_cli_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "audit", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| **5. Audit verification** (2,000 chained events" in done.stdout
    assert "SMOKE RUN" in done.stdout
    assert "median of" not in done.stdout  # one run: nothing to take a median of
    data = json.loads(out.read_text("utf-8"))
    assert [r["key"] for r in data["results"]] == ["audit"]
    assert data["smoke"] is True and data["failed"] == [] and data["scale"] == "smoke"
    assert data["results"][0]["runs"] == 1 and len(data["results"][0]["samples"]) == 1


def test_bench_cli_runs_each_benchmark_as_often_as_asked(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    command = ["-m", "bench", "--smoke", "--runs", "3", "--only", "audit", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Each value is the median of 3 runs" in done.stdout
    assert "load average" in done.stdout.splitlines()[0]
    result = json.loads(out.read_text("utf-8"))["results"][0]
    assert result["runs"] == 3 and len(result["samples"]) == 3
    verify = sorted(sample["verify_s"] for sample in result["samples"])
    assert result["figures"]["verify_s"] == verify[1]


def test_bench_cli_refuses_unknown_benchmarks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "export,speed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "unknown benchmark(s) speed" in done.stderr


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(range(1, 201)), 99, 198),
        (list(range(1, 201)), 100, 200),
        ([3.0, 1.0, 2.0], 0, 1.0),
    ],
)
def test_bench_percentile_is_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert report.percentile(values, pct) == expected


def test_bench_render_marks_checks_and_counts_targets_met() -> None:
    result = Result(
        key="x",
        title="9. Example",
        setup="tiny",
        rows=(
            Row("context", "1 s"),
            Row("met", report.times(0.5), report.at_most(1), True),
            Row("missed", "9 | 10", "0", False),
        ),
    )
    facts = report.Machine("2026-11-27", 2, 3.8, "CPU", "3.11.7", "Linux")
    table = report.render([result], facts)
    assert table.splitlines()[0] == (
        "Benchmarks measured 2026-11-27, 2 cores (CPU), 3.8 GiB RAM, Python 3.11.7, Linux."
    )
    assert "| **9. Example** (tiny) | context | 1 s |  |  |  |" in table
    assert "|  | met | 0.50\u00d7 |  | \u2264 1\u00d7 | pass |" in table
    assert "|  | missed | 9 \\| 10 |  | 0 | FAIL |" in table
    assert "1 of 2 targets met." in table
    assert not result.ok


def test_bench_resources_smoke_runs_both_resources_at_once_and_each_alone() -> None:
    result = resources.BENCHMARK.run()
    well_formed(result, "resources")
    f = result.figures
    # The same search: as many calls at once as both alone together.
    assert f["calls_together"] == f["calls_apart"] > 0
    assert f["together_s"] > 0 and f["apart_s"] > 0
    assert f["ratio"] == f["together_s"] / f["apart_s"]


def test_bench_search_smoke_counts_find_and_the_listing_script_on_the_same_images() -> None:
    result = search.BENCHMARK.run()
    well_formed(result, "search")
    f = result.figures
    size = search.SIZES["smoke"]
    # GetProjects; per project GetIterations and one count per scope (workspace, iterations).
    assert f["find_calls"] == f["least_calls"] == 1 + size.projects * (2 + size.iterations)
    assert f["images"] == sum(sum(p) for p in size.person)
    assert f["baseline_calls"] > f["find_calls"]
    assert f["baseline_default_page_calls"] >= f["baseline_calls"]
    assert f["bound_s"] == f["find_calls"] / search.TPS
    assert f["calls_ratio"] == f["baseline_calls"] / f["find_calls"]
    assert f["find_s"] > 0 and f["tag_s"] > 0 and f["slow_s"] > 0


def _example(f: Figures) -> Result:
    return Result(
        key="x",
        title="9. Example",
        setup=f"{f['images']:,.0f} images",
        rows=(
            Row("wall time", report.seconds(f["wall_s"])),
            report.within("wall ÷ bound", f["over_bound"], 1.1),
            Row("pages", report.count(f["pages"])),
        ),
        figures=f,
    )


def test_bench_runs_show_the_median_and_judge_the_target_on_it() -> None:
    example = Benchmark("x", lambda scale: {}, _example)
    samples = [
        {"images": 500, "wall_s": 3.0, "over_bound": 1.5, "pages": 2},  # one slow run
        {"images": 500, "wall_s": 2.0, "over_bound": 1.0, "pages": 2},
        {"images": 500, "wall_s": 2.2, "over_bound": 1.05, "pages": 2},
    ]
    result = summarize(example, samples)
    assert result.runs == 3 and result.samples == tuple(samples)
    assert result.figures == {"images": 500, "wall_s": 2.2, "over_bound": 1.05, "pages": 2}
    assert result.rows == (
        Row("wall time", "2.20 s", spread="2.00 s \u2013 3.00 s"),
        Row("wall ÷ bound", "1.05\u00d7", "\u2264 1.1\u00d7", True, "1.00\u00d7 \u2013 1.50\u00d7"),
        Row("pages", "2"),  # the same in every run: no spread
    )
    assert result.ok  # the slow run alone would have missed the target
    missed = summarize(example, [samples[0], samples[0], samples[1]])
    assert not missed.ok and missed.rows[1].value == "1.50\u00d7"


def test_bench_one_run_has_no_spread() -> None:
    example = Benchmark(
        "x", lambda scale: {"images": 9, "wall_s": 1, "over_bound": 2, "pages": 1}, _example
    )
    result = example.run("smoke", 1)
    assert result.runs == 1 and all(row.spread == "" for row in result.rows)
    assert not result.ok
