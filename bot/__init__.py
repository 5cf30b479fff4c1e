"""cv-dsr-bot: GDPR data-subject requests (export and erasure) against Azure Custom Vision.

The product without Slack. Where things are:

- the rules: `policy.py` (who may do what, where: one table), read beside `lifecycle.py`
  (statuses, request and job kinds, and the table of which status may follow which, on whose
  action, that the store enforces);
- the commands: `commands.py` (what `/cv` asks for, as data, and its stored form), `parser.py`
  (the text in, a command out), `help.py` (the forms and the help);
- what happens: `service.py` orchestrates a command or a click (facts, policy, one transaction);
  `subject.py` finds one data subject's images (`/cv find`: the `$filter`, the scope, the search);
  `subject.py` finds one data subject's images across projects and snapshots (`find`);
- the statutory clock: `deadline.py` (due dates, extensions), `reminders.py` (the daily digest),
  `report.py` (the data-protection officer's report), `dashboard.py` (what the App Home shows);
- the jobs: `runner.py` (workers, leases, checkpoints, `JobContext`), `exporter.py` with
  `package.py`, `browse.py`, `coco.py` and `webpage.py` (the export package), `deletion.py`
  (preview, plan, execution, receipt);
- the adapters: `training.py` (the Training API client, over `models.py`), `resources.py` (a
  client per Custom Vision resource, and which resource holds a project), `store/` (SQLite,
  one module per concept, over `db.py`), `audit.py` (the hash-chained audit log);
- the wording people read: `wording.py`; errors: `errors.py`; config: `config.py`;
- the wiring: `app.py` builds the bot, `__main__.py` is the command line, `checks.py` the
  self-check, `trial.py` the live trial on a scratch project (with `pngbytes.py`'s images).

The Slack edge is the `handlers` package; the emulators and the sandbox are the `emulators`
package, which the product never imports at start-up.
"""

__version__ = "0.1.0"
