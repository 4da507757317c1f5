"""Hooks: what timeguard calls when the clock jumps or the sources disagree (alerts and repairs).

``api`` is the contract, ``registry`` finds hook types (entry-point group ``timeguard.hooks``), ``dispatch``
runs them in isolation, ``outbox`` delivers alerts at least once.
"""
