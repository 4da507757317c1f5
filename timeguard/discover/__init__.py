"""Find what a wrong clock can poison on this host: the running ``celery beat`` processes, which scheduler each
runs and the hook that would repair it (``timeguard discover``). Reads /proc and the projects' files; never
imports or runs the applications' code."""
