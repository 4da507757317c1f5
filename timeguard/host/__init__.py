"""What runs on this host, read from /proc, systemd and the projects' files — never by importing or running the
applications' code: the celery beat processes (their command lines, schedulers, settings, units) and any process's
environment, interpreter and owner. Read by ``timeguard discover`` (which proposes hooks) and by the repairs that
must know whether a store's owner still runs (celery_shelve)."""
