"""Store — where the flow becomes durable: after detection, before the dispatcher and the hooks.

In: events, the clock floor and boot id, check summaries, the daemon's heartbeat (today also hook runs, the
outbox and repair undo records). Out: one SQLite journal (WAL, one transaction per write) that the dispatcher
delivers from and ``status`` reads after a crash or a reboot.
"""
