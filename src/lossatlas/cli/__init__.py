"""The ``lossatlas`` command line: thin commands over the Python API, one module per family.

A new command family is a module ``cli/<family>_cmd.py`` that imports ``app`` from ``._app`` and
registers its commands with ``@app.command()``; it is imported below.
"""

from ._app import app, main
from . import convexity_cmd, curvature_cmd, demo_cmd, export_cmd, paths_cmd, study_cmd, surface_cmd  # noqa: F401,E402  (registers commands)
from . import report_cmd  # noqa: F401,E402

__all__ = ["app", "main"]
