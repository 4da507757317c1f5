"""Store — where the flow becomes durable: after detection, before the dispatcher and the hooks.

In: events, the clock floor and boot id, check summaries, the daemon's heartbeat and hook runs. Out: one SQLite
journal (WAL, one transaction per write) that ``status`` reads after a crash or a reboot. The journal is the
connection, the transactions (``transaction()``, ``read()``) and the migrations of every table; the outbox's SQL
lives in ``hooks/outbox.py`` (OutboxStore) and the undo log's in ``repair/``, both on those primitives. It never
imports what is above it (tests/test_layering.py).
"""
