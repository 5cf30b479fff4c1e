"""Benchmarks of the bot against the local emulators: `python -m bench` (or `make bench`).

Each benchmark starts what it needs (the Custom Vision and Slack emulators in this process, the
bot as its own `python -m bot serve` process, driven by signed Slack requests), measures, and
returns a `bench.report.Result`: figures plus ratios against a bound or a baseline measured in
the same run. The machine is shared and noisy, so the ratios are the point; absolute seconds
are context. Only loopback traffic; every benchmark stops by itself.

Modules: report (the table; pure), harness (processes, waits, the load generator), baseline
(the SDK-sample exporter), default_bolt (a Bolt app wired the default way), and one module per
benchmark: export, memory, deletion, ack, auditlog.
"""
