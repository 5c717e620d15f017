"""Helpers the tests in several folders share (importable as ``support``: pyproject's
pytest ``pythonpath`` puts tests/ on the path)."""
