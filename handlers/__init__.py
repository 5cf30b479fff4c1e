"""The Slack edge: listeners that ack, extract plain values, call bot/, and render replies.

- `listeners.py`: the Bolt listeners (slash command, buttons, the rejection dialog, the App
  Home), timed by `decider.py` so every ack comes within Slack's 3 seconds; `events.py` takes
  each Events API delivery once, whatever Slack's retries;
- `blocks.py` and `home.py`: pure Block Kit builders (messages, the App Home view), kept within
  Slack's limits by `limits.py`;
- `outbox.py`: delivers what the store queued (announcements, thread posts, files, the audit
  mirror), paced under Slack's rate tiers;
- `directory.py`: user-group and channel lookups, behind the service's `Directory`;
- `webapi.py`: the Slack Web API client; `checks.py`: the self-check's Slack part;
- `wsgi.py`: the HTTP edge (hardened WSGI app, /healthz, the waitress server).

Only this package and `bot.app` import slack_bolt and slack_sdk (ruff's banned-api rule).
"""
