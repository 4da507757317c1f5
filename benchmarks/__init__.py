"""The benchmarks, run as modules from the repository root (``.venv/bin/python -m benchmarks.bench_idle``), so that
``benchmarks`` and ``tests.support`` import as packages of the checkout (see README.md)."""
