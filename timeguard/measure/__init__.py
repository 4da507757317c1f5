"""Measure — the first step of the flow: what time is it, according to sources other than this host?

In: configured sources (NTP servers, HTTPS ``Date`` URLs). Out: one ``Sample`` per source (``ntp``, ``http``,
over the resolver in ``net``, bounded by ``sanity``), and their ``consensus`` — the ``Verdict`` that the detector
and ``check`` act on. Nothing here writes state or knows about hooks.
"""
