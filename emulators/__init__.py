"""Real HTTP emulators of the Custom Vision Training API and the Slack Web API.

Tests, benchmarks and the sandbox run the unmodified clients against these servers.
"""
