"""The process machinery of ``timeguard run`` that timeguard/agent.py wires together: signals (a self-pipe, the
handler only notes), SIGHUP's reload (a worker with a deadline), the periodic jobs (safe across clock steps) and
the daemon's writes to the journal (an event the disk refuses is kept, and still reaches the hooks)."""
