"""Preference data: the `Comparison` record, loaders, public formats and per-user splits."""

from personal_rm.data.comparison import Comparison, DataError, RowError
from personal_rm.data.io import LoadResult, load_comparisons, resolve_dataset

__all__ = [
    "Comparison",
    "DataError",
    "LoadResult",
    "RowError",
    "load_comparisons",
    "resolve_dataset",
]
