"""Studies: reproducible experiments that train a family of models on offline data, cache them,
and write one table (CSV + JSON) and one figure set with shared scales to one folder.

>>> import lossatlas
>>> sorted(lossatlas.studies.names())[:3]
['activation', 'batch-size', 'depth']
"""

from . import activation, batch_size, depth, skip, targets, trajectory, width  # noqa: F401  (register the studies)
from ._core import COLUMNS, REGISTRY, Study, StudyResult, config_hash, markdown_table, run_study


def names() -> list[str]:
    """The registered study names."""
    return list(REGISTRY)


__all__ = ["run_study", "names", "REGISTRY", "Study", "StudyResult", "config_hash", "COLUMNS", "markdown_table"]
