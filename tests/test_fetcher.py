"""bot.fetcher: the export's download process, against the Custom Vision emulator over HTTP.

Real processes throughout: each test starts `python -m bot.fetcher` (or a child that
misbehaves) and compares what it answers with what the in-process client does with the
same link. The export's own tests (tests/test_exporter.py) run every export with files
through it too.
"""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.errors import MalformedResponse, TrainingApiError
from bot.fetcher import Fetcher, FetcherLost, child_env
from bot.training import Download, TrainingClient
from emulators.customvision import CustomVisionEmulator, Seed
from tests.harness import children

KEY = "fetcher-test-key-4Zr8"
SEED = Seed(projects=1, iterations=1, tags=2, images=6, predictions=0, image_bytes=300)
DAY = 86_400.0
WAIT = 30.0  # the most a test waits for a process (a bound, not a measure)

Answers = queue.Queue[tuple[Any, Download | BaseException]]


class Rig:
    """An emulator, the bot's client for it, and a download process with its answers."""

    def __init__(self, cv: CustomVisionEmulator, tmp_path: Path) -> None:
        self.cv = cv
        self.folder = tmp_path
        self.client = TrainingClient(cv.endpoint, KEY, max_attempts=2, backoff_base=0.0)
        self.answers: Answers = queue.Queue()
        self.lost: queue.Queue[FetcherLost] = queue.Queue()
        self.fetcher = self.start()

    def start(self, program: tuple[str, ...] | None = None) -> Fetcher[Any]:
        options: dict[str, Any] = {} if program is None else {"program": program}
        return Fetcher(
            self.client,
            2,
            on_answer=lambda context, got: self.answers.put((context, got)),
            on_lost=self.lost.put,
            **options,
        )

    def links(self) -> list[str]:
        p = self.cv.data.project_ids()[0]
        uris = [i.original_image_uri for i in self.client.get_images_page(p)]
        assert all(uris)
        return [u for u in uris if u]

    def fetch(self, uri: str, name: str) -> Download | BaseException:
        self.fetcher.order(uri, self.folder / "child" / name, name)
        context, got = self.answers.get(timeout=WAIT)
        assert context == name
        return got

    def here(self, uri: str, name: str) -> Download | BaseException:
        try:
            return self.client.download(uri, self.folder / "here" / name)
        except (TrainingApiError, ValueError) as exc:
            return exc


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with CustomVisionEmulator(KEY, seed=SEED) as cv:
        r = Rig(cv, tmp_path)
        try:
            yield r
        finally:
            r.fetcher.close()
            r.client.close()


def open_fds() -> set[str]:
    return {fd.name for fd in Path("/proc/self/fd").iterdir()}


def described(got: Download | BaseException) -> tuple[Any, ...]:
    """What the parent sees of an outcome: a file's size, hash and head, or the exception."""
    if isinstance(got, Download):
        return ("file", got.size, got.sha256, got.head, got.path.read_bytes())
    if isinstance(got, TrainingApiError):
        fields = (got.user_message, got.status, got.code, got.operation, got.maybe_applied)
        return (type(got).__name__, *fields)
    return (type(got).__name__, str(got))


def test_fetcher_downloads_what_the_client_downloads(rig: Rig) -> None:
    uri = rig.links()[0]
    got = rig.fetch(uri, "a")
    assert isinstance(got, Download)
    assert got.path == rig.folder / "child" / "a"
    assert described(got)[:4] == described(rig.here(uri, "a"))[:4]
    assert got.path.read_bytes() == rig.cv.image_bytes(Path(uri.split("?")[0]).name[2:])


def test_fetcher_writes_a_relative_destination_where_the_bot_runs(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # BOT_WORK_DIR's default is relative: ./data/work
    rig.fetcher.order(rig.links()[0], Path("data/work/cache/x"), "x")
    _, got = rig.answers.get(timeout=WAIT)
    assert isinstance(got, Download)
    assert got.path == Path("data/work/cache/x")
    assert (tmp_path / "data/work/cache/x").stat().st_size == got.size


@pytest.mark.parametrize("fault", ["expired link", "deleted blob", "truncated", "relative path"])
def test_fetcher_raises_in_the_parent_what_the_client_raises(rig: Rig, fault: str) -> None:
    uri = rig.links()[1]
    if fault == "expired link":
        rig.cv.data.travel(DAY + 60)
    elif fault == "deleted blob":
        p = rig.cv.data.project_ids()[0]
        image = rig.cv.data.image_ids(p)[1]
        rig.cv.data.api_delete_images(
            p, [image], all_images=False, all_iterations=True, delay=lambda p, i: 0.0
        )
    elif fault == "truncated":
        rig.cv.faults.blob_truncate_rate = 1.0
    else:
        uri = "a1b2/o-image.png"
    got = rig.fetch(uri, "b")
    expected = rig.here(uri, "b")
    assert isinstance(expected, BaseException), "the fault did not fault"
    assert described(got) == described(expected)
    assert not (rig.folder / "child" / "b").exists()
    assert not list((rig.folder / "child").glob(".*.part"))


def test_fetcher_logs_its_retries_in_the_bot_s_log(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.cv.faults.blob_truncate_rate = 1.0
    with caplog.at_level(logging.INFO, logger="bot.training"):
        got = rig.fetch(rig.links()[0], "c")
    assert isinstance(got, MalformedResponse)
    retries = [r for r in caplog.records if r.name == "bot.training"]
    assert [r.levelno for r in retries] == [logging.WARNING]
    message = retries[0].getMessage()
    assert message.startswith("download process: BlobDownload attempt 1/2 failed (0 of ")
    assert message.endswith(" bytes); retrying in 0.00s")


def test_fetcher_environment_holds_no_secret(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "SLACK_BOT_TOKEN": "xoxb-fetcher-secret-1",
        "SLACK_SIGNING_SECRET": "fetcher-signing-secret-2",
        "SLACK_APP_TOKEN": "xapp-fetcher-secret-3",
        "CUSTOM_VISION_TRAINING_KEY": "fetcher-training-key-4",
        "CUSTOM_VISION_RESOURCES": "prod=https://x.invalid;fetcher-training-key-5",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    fetcher = rig.start()
    try:
        environ = Path(f"/proc/{fetcher.pid}/environ").read_bytes()
        command = Path(f"/proc/{fetcher.pid}/cmdline").read_bytes()
        env = dict(e.split(b"=", 1) for e in environ.split(b"\0") if e)
    finally:
        fetcher.close()
    for secret in [*secrets.values(), KEY]:
        assert secret.encode() not in environ + command
    assert not {n for n in env if n.startswith((b"SLACK", b"CUSTOM_VISION"))}
    assert env[b"HTTPS_PROXY"] == b"http://proxy.invalid:3128"
    assert env[b"no_proxy"] == b"127.0.0.1,localhost"
    assert env[b"REQUESTS_CA_BUNDLE"] == b"/etc/ssl/certs/ca-certificates.crt"
    assert child_env({"SLACK_BOT_TOKEN": "x", "PATH": "/bin"})["PATH"] == "/bin"


def test_fetcher_close_ends_the_process_and_leaks_nothing(rig: Rig) -> None:
    rig.fetcher.close()
    links = rig.links()  # the client's own connection opens before the count
    before = open_fds()
    fetcher = rig.start()
    for n, uri in enumerate(links):
        fetcher.order(uri, rig.folder / "many" / str(n), n)
    fetcher.close()  # the orders in flight are answered before it returns
    answered = []
    while not rig.answers.empty():
        answered.append(rig.answers.get_nowait())
    assert answered and all(isinstance(got, Download) for _, got in answered)
    assert rig.lost.empty()
    assert children() == {}
    assert open_fds() == before
    fetcher.order(links[0], rig.folder / "late", "late")  # after close: dropped
    assert rig.answers.empty()


@pytest.mark.parametrize(
    ("script", "detail"),
    [
        ("print('200 OK', flush=True)", "answered something that is not an answer"),
        (
            'print(\'{"id": 99, "size": 1}\', flush=True)',
            "answered something that is not an answer",
        ),
        ("sys.exit(3)", "exited with status 3 before the export was done"),
        (
            "os.kill(os.getpid(), signal.SIGKILL)",
            "was killed by signal 9 before the export was done",
        ),
    ],
)
def test_fetcher_that_misbehaves_is_lost_and_stopped(rig: Rig, script: str, detail: str) -> None:
    rig.fetcher.close()
    program = (
        sys.executable,
        "-c",
        f"import os, signal, sys, time\nsys.stdin.readline()\n{script}\ntime.sleep({WAIT})",
    )
    fetcher = rig.start(program)
    fetcher.order(rig.links()[0], rig.folder / "x", "x")
    lost = rig.lost.get(timeout=WAIT)
    assert lost.detail == detail
    assert str(lost) == f"the export's download process {detail}"
    fetcher.close()
    assert rig.answers.empty()
    assert children() == {}


def test_fetcher_is_killed_when_it_does_not_finish_at_close(rig: Rig) -> None:
    rig.fetcher.close()
    # Reads its orders and never answers: close waits `timeout`, then kills it.
    program = (sys.executable, "-c", "import sys, time\nsys.stdin.read()\ntime.sleep(600)")
    fetcher = rig.start(program)
    fetcher.order(rig.links()[0], rig.folder / "x", "x")
    fetcher.close(timeout=0.5)
    assert children() == {}
    assert rig.lost.empty()


def test_fetcher_exits_by_itself_when_its_parent_dies(tmp_path: Path) -> None:
    parent = textwrap.dedent(
        """
        import sys, time
        from bot.fetcher import Fetcher
        from bot.training import TrainingClient
        client = TrainingClient("http://127.0.0.1:9", None)
        fetcher = Fetcher(client, 2, on_answer=print, on_lost=print)
        print(fetcher.pid, flush=True)
        time.sleep(600)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, env=child_env(), text=True
    )
    try:
        assert process.stdout is not None
        child = int(process.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        process.send_signal(signal.SIGKILL)  # no chance to close anything: only the pipe ends
        process.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the download process outlived its parent"
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, ended but not reaped by init, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
