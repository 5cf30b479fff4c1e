"""A Bolt app wired the default way, for the acknowledgement-latency comparison.

`python -m bench.default_bolt` serves `/cv` the way Bolt's documentation shows: an ack function
that answers at once, and the slow work (for `export images <p>`: list the images, download
every file one after another) in a lazy listener, both on Bolt's own default listener pool.
It is served by the same waitress set-up as the bot (8 threads, Bolt's WSGI adapter), so the
only difference measured is where the slow work runs. Configuration comes from the environment
(the same variables as the bot, plus DOWNLOAD_DIR for the files); once it serves it prints
the same "serving /cv on http://...:<port>/slack/events" line as the bot.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from slack_bolt import Ack, App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from waitress.server import BaseWSGIServer, create_server

from bot.training import TrainingClient

SERVER_THREADS = 8  # as handlers.wsgi.HttpServer


def slow_export(client: TrainingClient, text: str, folder: Path, stop: threading.Event) -> int:
    """Do what the bot's export does, inline: list a project's images, download each file.

    Returns the files downloaded; stops early once `stop` is set (the process is ending).
    """
    words = text.split()
    if len(words) < 3 or words[:2] != ["export", "images"] or stop.is_set():
        return 0
    project = words[2]
    done = 0
    for image in client.iter_images(project):
        if stop.is_set():
            break
        if image.original_image_uri:
            client.download(image.original_image_uri, folder / f"{image.id}.png")
            done += 1
    return done


def build_app(env: dict[str, str], folder: Path, stop: threading.Event) -> App:
    """Return the default-way Bolt app for `env`."""
    web = WebClient(token=env["SLACK_BOT_TOKEN"], base_url=env["SLACK_API_URL"])
    app = App(client=web, signing_secret=env["SLACK_SIGNING_SECRET"])
    training = TrainingClient(
        env["CUSTOM_VISION_ENDPOINT"],
        env["CUSTOM_VISION_TRAINING_KEY"],
        tps=float(env.get("CUSTOM_VISION_TPS", "10")),
    )

    def acknowledge(ack: Ack, body: dict[str, Any]) -> None:
        ack(text=f"Working on `{body.get('text', '')}`…")

    def work(body: dict[str, Any]) -> None:
        slow_export(training, str(body.get("text", "")), folder, stop)

    app.command("/cv")(ack=acknowledge, lazy=[work])
    return app


def main() -> None:
    """Serve until SIGTERM."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    env = dict(os.environ)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    folder = Path(env["DOWNLOAD_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    app = build_app(env, folder, stop)
    server = create_server(
        SlackRequestHandler(app),
        host="127.0.0.1",
        port=int(env.get("PORT", "0")),
        threads=SERVER_THREADS,
    )
    threading.Thread(target=server.run, daemon=True).start()
    # One host and port: a single listening socket, not a MultiSocketServer.
    assert isinstance(server, BaseWSGIServer) and server.socket is not None
    port = server.socket.getsockname()[1]
    print(f"serving /cv on http://127.0.0.1:{port}/slack/events", flush=True)
    stop.wait()
    server.close()
    # The lazy exports see `stop` and return after their current download; the process ends
    # when Bolt's pool threads have.


if __name__ == "__main__":
    main()
