"""Watch — the host's own clock, the other input of the flow beside ``measure``.

In: the kernel's clocks (REALTIME − BOOTTIME, a timerfd woken when the clock is set; read-only adjtimex and the
running time daemons in ``localclock``). Out: ``ClockStep`` readings from ``clockwatch``, which ``detector`` (pure
policy) turns, with the verdicts from ``measure``, into the events the agent journals and dispatches.
"""
