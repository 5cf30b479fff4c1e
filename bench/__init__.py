"""Benchmarks of the bot against the local emulators: `python -m bench` (or `make bench`).

Each benchmark (a `bench.runs.Benchmark`) starts what it needs (the Custom Vision and Slack
emulators in this process, the bot as its own `python -m bot serve` process, driven by signed
Slack requests) and measures one run's figures: sizes, seconds, and ratios against a bound or
a baseline measured in the same run. Every benchmark runs three times; the table shows the
median of each figure and its spread, and judges each target on the median. The machine is
shared and noisy, so the ratios are the point; absolute seconds are context. Only loopback
traffic; every benchmark stops by itself.

Modules: runs (scales, repeated runs, median and spread), report (the table; pure), harness
(processes, waits, the load generator), baseline (the SDK-sample exporter), default_bolt (a
Bolt app wired the default way), and one module per benchmark: export, memory, deletion, ack,
auditlog, burst, resources.
"""
