"""Repairs of application state that a wrong wall clock left behind: the RepairTarget protocol (target.py), the
one evidence rule (evidence.py), the undo log (undo.py), the generic hook (hook.py) and the targets, found through
the entry-point group ``timeguard.repair_targets`` (django-celery-beat is the first: celery_beat.py)."""
