"""A fake Slack over real HTTP, for the tests, the benchmarks and the sandbox.

- webapi.py: `SlackEmulator`, the workspace and the Web API methods the bot calls, uploads,
  response_urls, rate tiers and fault switches.
- socket_mode.py: Socket Mode, the WebSocket (RFC 6455 framing) and its envelopes and acks.
- blockkit.py: Block Kit validation and Slack's length limits, pure.
- records.py: the frozen snapshots tests read (messages, calls, files, channels, users).
- server.py: the HTTP server that routes requests to the Web API or Socket Mode.
- driver.py: `SlackDriver`, which sends the bot what Slack sends it (signed commands, clicks,
  modal submissions, Socket Mode envelopes).
"""
