"""The export's blob downloads, in a process of their own: `python -m bot.fetcher`.

An export downloads thousands of files on many threads. In the bot's process those threads
(HTTP parsing, hashing, writing) shared one interpreter lock with the job's thread, which
writes the package, and with the Bolt listeners, which must acknowledge within Slack's 3 s.
Here they run in a child process with a lock of its own; the parent only writes an order and
reads an answer per file.

`Fetcher` is the parent's handle on one child (I/O: a process and its two pipes); `main` is
the child. They speak JSON lines:

    order  (stdin):  {"id": 7, "uri": "<absolute blob link>", "dest": "<absolute path>"}
    answer (stdout): {"id": 7, "size": 1234, "sha256": "<hex>", "head": "<base64>"}
                 or  {"id": 7, "error": {"type": "ServiceError", "message": ..., "status": 403,
                      "code": ..., "operation": "BlobDownload", "maybe_applied": false}}
    log line (stdout, between answers): {"log": {"level": 30, "logger": "bot.training",
                      "message": "BlobDownload attempt 1/6 failed (HTTP 503); retrying ..."}}

The child's log lines (the client's retries, a crash's traceback) are logged again in the
bot, with its format, redaction and the request's id, so there is one log.

The child downloads each order with bot.training's own blob download (TrainingClient without
a key: the same retries, backoff, truncation checks, proxy settings and scrubbed messages)
into `dest`, which appears only when complete. An error answer carries what the parent needs
to raise the very exception the client raised (`_error`, `_rebuilt`): NotFound, ServiceError
with its status and code (so an expired link is renewed in the parent), TransportError,
MalformedResponse, Throttled, an OSError with its errno (a full disk), a ValueError.

The child holds no secret: its environment is a few basics and the proxy and certificate
settings (`child_env`), never Slack tokens, the signing secret or a training key, and it
needs none (blob links carry their own signature). It ignores SIGINT (the parent decides
when it stops) and stops at stdin's end: queued orders are dropped, downloads in flight
finish and are answered, then it exits. A parent that dies closes stdin, so the child
follows it. A child that ends early or answers what is not an answer is `FetcherLost`: the
parent's job runs again from its checkpoint (bot.errors.JobRetry).
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import bot
from bot import errors
from bot.training import Download, TrainingClient

log = logging.getLogger(__name__)

C = TypeVar("C")

CLOSE_WAIT = 10.0  # seconds the downloads in flight may take to finish at close
# What the child inherits: locale, temporary folder, and what `requests` reads for blob links
# (proxies: *_proxy in any case; certificate bundles). Everything else stays out.
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
_CERTIFICATES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
# The errors an answer may carry, by name: the client's own, as bot.errors defines them.
_ERRORS: dict[str, type[errors.TrainingApiError]] = {
    cls.__name__: cls
    for cls in (
        errors.TrainingApiError,
        errors.ServiceError,
        errors.NotFound,
        errors.Unauthorized,
        errors.Throttled,
        errors.TransportError,
        errors.MalformedResponse,
    )
}
_CODE_ROOT = Path(bot.__file__).resolve().parent.parent  # the folder holding the bot package


class FetcherLost(errors.JobRetry):
    """The download process ended before it was closed, or answered garbage."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the export's download process {detail}")
        self.detail = detail


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the download process's environment: basics, proxies and certificate bundles
    from `environ` (default os.environ), and a PYTHONPATH that finds this `bot` package."""
    source = os.environ if environ is None else environ
    env = {
        name: value
        for name, value in source.items()
        if name in _INHERITED or name in _CERTIFICATES or name.lower().endswith("_proxy")
    }
    paths = [str(_CODE_ROOT), *filter(None, source.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# ---------------------------------------------------------------------------------------------
# The parent's side


class Fetcher(Generic[C]):
    """A download process: `order` sends a file to download; each answer goes to `on_answer`
    (a Download, or the exception the client raised) with the order's `context`, and a loss
    of the process to `on_lost`, both on the thread reading the answers. Thread-safe.

    `program` runs the child (tests give one that misbehaves); the client's settings follow
    it as --name=value options.
    """

    def __init__(
        self,
        client: TrainingClient,
        threads: int,
        *,
        on_answer: Callable[[C, Download | BaseException], None],
        on_lost: Callable[[FetcherLost], None],
        program: Sequence[str] = (sys.executable, "-m", "bot.fetcher"),
    ) -> None:
        settings = {"threads": threads, "endpoint": client.endpoint, **client.download_settings}
        command = [*program]
        command += [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._orders: dict[int, tuple[Path, C]] = {}
        self._next = 1
        self._closing = False
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_env(),
                cwd=_CODE_ROOT,  # `-m` looks here first: this very package, not the bot's cwd's
                close_fds=True,
            )
        except OSError as exc:  # no memory or processes left for it, for now
            raise FetcherLost(f"could not start ({exc.strerror or type(exc).__name__})") from None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin: IO[bytes] = self._process.stdin
        self._stdout: IO[bytes] = self._process.stdout
        # The reader logs the child's lines in the context of the request that started it.
        context = contextvars.copy_context()
        self._reader = threading.Thread(
            target=context.run, args=(self._read,), name="fetcher-answers", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """Return the download process's id."""
        return self._process.pid

    def order(self, uri: str, dest: Path, context: C) -> None:
        """Send a download of `uri` into `dest`; its answer comes with `context`.

        An order to a process that is gone is dropped: the reader reports the loss.
        """
        with self._lock:
            if self._closing:
                return
            ident, self._next = self._next, self._next + 1
            self._orders[ident] = (dest, context)
            # Absolute: the child's working directory is not the bot's.
            line = json.dumps({"id": ident, "uri": uri, "dest": os.path.abspath(dest)}) + "\n"
            with suppress(OSError, ValueError):  # a broken pipe: the reader reports the loss
                self._stdin.write(line.encode("utf-8"))
                self._stdin.flush()

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """End the process: it drops the queued orders and answers those in flight (to
        `on_answer`, before this returns); killed when they take longer than `timeout`."""
        with self._lock:
            self._closing = True
            with suppress(OSError, ValueError):
                self._stdin.close()
        self._reader.join(timeout)
        if self._reader.is_alive():
            log.warning("the download process did not end within %.0f s; killing it", timeout)
            self._process.kill()
            self._reader.join()
        self._process.wait()
        self._stdout.close()

    def kill(self) -> None:
        """End the process at once (answers in flight are lost) and wait for it."""
        with self._lock:
            self._closing = True
        self._process.kill()
        self.close()

    def _read(self) -> None:
        """On the reader thread: hand each answer over until the process's output ends."""
        try:
            for line in self._stdout:
                answer = json.loads(line)
                if "log" in answer:
                    _relog(answer["log"])
                else:
                    self._on_answer(*self._parsed(answer))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("the download process answered garbage (%s); stopping it", exc)
            self._process.kill()
            self._on_lost(FetcherLost("answered something that is not an answer"))
            return
        except OSError:
            pass  # the pipe broke: the process is gone, said below
        with self._lock:
            closing = self._closing
        if not closing:
            code = self._process.wait()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self._on_lost(FetcherLost(f"{how} before the export was done"))

    def _parsed(self, answer: Mapping[str, Any]) -> tuple[C, Download | BaseException]:
        """Return the context and outcome of one answer; raise ValueError (KeyError,
        TypeError) when it is not an answer to an order in flight."""
        with self._lock:
            dest, context = self._orders.pop(int(answer["id"]))
        error = answer.get("error")
        if error is not None:
            return context, _rebuilt(error)
        head = base64.b64decode(answer["head"], validate=True)
        size, sha256 = int(answer["size"]), str(answer["sha256"])
        if size < 0 or len(sha256) != 64:
            raise ValueError("an answer with an impossible size or hash")
        return context, Download(path=dest, size=size, sha256=sha256, head=head)


def _relog(line: Mapping[str, Any]) -> None:
    """Log a line of the child's log here; raise ValueError when it is not one."""
    level, name, message = line["level"], line["logger"], line["message"]
    if not (isinstance(level, int) and isinstance(name, str) and isinstance(message, str)):
        raise ValueError("a log line without a level, a logger and a message")
    logging.getLogger(name).log(level, "download process: %s", message)


class _ToParent(logging.Handler):
    """The child's log handler: each record goes to the parent as a log line."""

    def __init__(self, send: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        line = {"level": record.levelno, "logger": record.name, "message": message}
        self._send(json.dumps({"log": line}))


def _error(exc: BaseException) -> dict[str, Any]:
    """Return an exception of the client as an answer's "error" (see `_rebuilt`)."""
    if isinstance(exc, errors.TrainingApiError) and type(exc).__name__ in _ERRORS:
        return {
            "type": type(exc).__name__,
            "message": exc.user_message,
            "status": exc.status,
            "code": exc.code,
            "operation": exc.operation,
            "maybe_applied": exc.maybe_applied,
        }
    if isinstance(exc, OSError):
        return {"type": "OSError", "errno": exc.errno, "message": exc.strerror or str(exc)}
    if isinstance(exc, ValueError):
        return {"type": "ValueError", "message": str(exc)}
    # A bug in the child: the parent fails the job with an internal error.
    return {"type": "crash", "message": f"{type(exc).__name__} in the download process"}


def _rebuilt(error: Mapping[str, Any]) -> BaseException:
    """Return the exception an answer's "error" stands for; raise ValueError when it is none."""
    kind = error["type"]
    message = str(error["message"])
    if kind in _ERRORS:
        status = error.get("status")
        return _ERRORS[kind](
            message,
            status=None if status is None else int(status),
            code=None if error.get("code") is None else str(error["code"]),
            operation=None if error.get("operation") is None else str(error["operation"]),
            maybe_applied=bool(error.get("maybe_applied")),
        )
    if kind == "OSError":
        number = error.get("errno")
        return OSError(message) if number is None else OSError(int(number), message)
    if kind == "ValueError":
        return ValueError(message)
    if kind == "crash":
        return RuntimeError(message)
    raise ValueError(f"an error of unknown type {kind!r}")


# ---------------------------------------------------------------------------------------------
# The child


def _options(argv: Sequence[str]) -> dict[str, str]:
    """Return the --name=value options of the command line (as Fetcher writes them)."""
    options: dict[str, str] = {}
    for arg in argv:
        name, equals, value = arg.partition("=")
        if not name.startswith("--") or not equals:
            raise SystemExit(f"bot.fetcher: unexpected argument {arg!r}")
        options[name[2:].replace("-", "_")] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Download the orders read from stdin until its end; return the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when downloads stop
    options = _options(sys.argv[1:] if argv is None else argv)
    threads = int(options["threads"])
    client = TrainingClient(
        options["endpoint"],
        None,
        connections=threads,
        timeout=float(options["timeout"]),
        max_attempts=int(options["max_attempts"]),
        backoff_base=float(options["backoff_base"]),
        backoff_cap=float(options["backoff_cap"]),
    )
    out = sys.stdout.buffer
    lock = threading.Lock()

    def answer(text: str) -> None:
        try:
            with lock:
                out.write(text.encode("utf-8") + b"\n")
                out.flush()
        except OSError:  # the parent is gone: nobody reads what is left to do
            os._exit(0)

    root = logging.getLogger()
    root.handlers[:] = [_ToParent(answer)]
    root.setLevel(logging.INFO)

    def download(order: Mapping[str, Any]) -> None:
        reply: dict[str, Any] = {"id": order["id"]}
        try:
            got = client.download(str(order["uri"]), Path(order["dest"]))
        except Exception as exc:
            if not isinstance(exc, errors.TrainingApiError | OSError | ValueError):
                log.exception("downloading order %s failed", order["id"])
            reply["error"] = _error(exc)
        else:
            head = base64.b64encode(got.head).decode("ascii")
            reply.update(size=got.size, sha256=got.sha256, head=head)
        answer(json.dumps(reply))

    with client, ThreadPoolExecutor(threads, thread_name_prefix="fetch") as pool:
        for line in sys.stdin.buffer:
            pool.submit(download, json.loads(line))
        # stdin ended: the parent closed it, or died. Drop what is queued, finish the rest.
        pool.shutdown(wait=True, cancel_futures=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
