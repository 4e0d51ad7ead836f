"""The ways in: ``python -m harness`` (its commands, the ``list`` cache, the plugin scaffolds) and
``harness.benchmark(...)`` from Python. Each hands a validated grid to :mod:`harness.run`."""
