"""aiocontain's benchmark harness: start-up, networking, concurrency, throughput and memory.

Run through ``nox -s bench`` (stages the package, a rootfs and the comparison
runtimes, then runs this as an unprivileged user) or directly as ``python -m
bench``. The cases are interleaved (see ``bench.runner``); the result is ratios
of medians measured side by side (``bench.report``), written as a table and as
JSON. Nothing here asserts a time: it measures.
"""
