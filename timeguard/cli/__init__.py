"""CLI — the argparse front over every step of the flow: ``check`` (measure), ``run`` (the agent), ``status``
and ``events`` (read the store), ``hooks``, ``repair``, ``config``.

In: the command line and the configuration. Out: exit codes, tables, JSON and Nagios lines. The parser lives in
``main`` (the console script is ``timeguard.cli.main:main``); heavy imports stay inside the commands so
``--help`` is instant.
"""
