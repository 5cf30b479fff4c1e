"""Real HTTP emulators of the Custom Vision Training API and of Slack, and the sandbox on them.

Tests, benchmarks and the sandbox run the unmodified clients against these servers:
customvision.py (with its data in cvdata.py, its metadata `$filter` in metadatafilter.py and
its image bytes from bot/pngbytes.py), the slack/ package (Web API, Socket Mode, Block Kit
validation, the driver), stack.py (the bot started on both), sandbox.py (the scripted demo)
and faults.py (a locked database, a full disk). The product never imports them at start-up.
"""
