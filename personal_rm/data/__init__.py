"""Preference data: the `Comparison` record, loaders, public formats and per-user splits."""

from personal_rm.data.comparison import Comparison, DataError, RowError, by_user
from personal_rm.data.io import LoadResult, load_comparisons, resolve_dataset

__all__ = [
    "Comparison",
    "DataError",
    "LoadResult",
    "RowError",
    "by_user",
    "load_comparisons",
    "resolve_dataset",
]
