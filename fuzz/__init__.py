"""Coverage-guided fuzz targets (atheris) for the acceptor's parsers and the
data-set structure check; run them with ``python fuzz/run.py`` (``make fuzz``).

Development tooling: no product package imports it, and it is not installed.
"""
