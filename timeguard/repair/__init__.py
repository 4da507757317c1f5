"""Repairs of application state that a wrong wall clock left behind (issue 5): django-celery-beat first."""

from __future__ import annotations

from timeguard.repair.celery_beat import CeleryBeatRepair, RepairError, RepairOutcome, RepairPlan

__all__ = ["CeleryBeatRepair", "RepairError", "RepairOutcome", "RepairPlan"]
