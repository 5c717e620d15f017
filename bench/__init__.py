"""CPU benchmarks (pytest-benchmark). A package, so that its conftest is imported as
``bench.conftest`` and never shadows ``tests/conftest.py`` when both run in one session."""
