"""Read and write files in the normalized schema (JSONL, JSONL.gz, Parquet).

`load_comparisons(..., on_error="skip")` keeps going past malformed rows and returns them
counted and located, so one bad line in a million never costs a whole run; the default
raises on the first one, naming file, line and field. A folder or a glob of shards reads as
one dataset (shards in name order); object-store URIs are for the Ray Data reader
(`actors.ingest`).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personal_rm.data.comparison import Comparison, DataError, RowError, parse_comparison

OnError = Literal["raise", "skip"]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "datasets"
# Datasets of `../shared/data` by name. Only LLMFAO (CC BY 4.0) ships inside the package;
# the others have no open licence and are read from the shared folder, never copied in.
SHARED_DATASETS = {
    "llmfao": "llmfao/llmfao_pairs.jsonl.gz",
    "jester": "jester/pairs.jsonl.gz",
    "global_dialogues": "global_dialogues/pairs_pairwise.jsonl.gz",
    "global_dialogues_binary": "global_dialogues/pairs_binary_derived.jsonl.gz",
}
SHIPPED_DATASETS = {"llmfao": SHIPPED_DIR / "llmfao" / "llmfao_pairs.jsonl.gz"}


@dataclass
class LoadResult:
    """Rows that parsed, and every row that did not (empty unless `on_error="skip"`)."""

    comparisons: list[Comparison]
    skipped: list[RowError] = field(default_factory=list)


def shared_data_root() -> Path:
    """`$PERSONAL_RM_SHARED_DATA`, else `../shared/data` beside the checkout."""
    env = os.environ.get("PERSONAL_RM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def resolve_dataset(name_or_path: str | os.PathLike[str]) -> Path:
    """Accept a file, a folder or glob of shards, or a dataset name (`llmfao`, `jester`, ...)."""
    path = Path(name_or_path)
    name = str(name_or_path)
    if path.exists() or (glob.has_magic(name) and glob.glob(name)):
        return path
    if name in SHIPPED_DATASETS:
        return SHIPPED_DATASETS[name]
    if name in SHARED_DATASETS:
        shared = shared_data_root() / SHARED_DATASETS[name]
        if shared.exists():
            return shared
        raise FileNotFoundError(
            f"dataset {name!r} is read from the shared data folder, not shipped: {shared} does "
            "not exist (set PERSONAL_RM_SHARED_DATA to the folder holding it)"
        )
    known = ", ".join(sorted(set(SHARED_DATASETS) | set(SHIPPED_DATASETS)))
    raise FileNotFoundError(f"no file {path} and no dataset of that name (known: {known})")


def json_rows(lines: Iterable[str], source: str) -> Iterator[tuple[int, Any]]:
    """`(line number, decoded row)` of JSON lines; an undecodable line as a `DataError`."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, DataError(RowError(source, number, None, f"invalid JSON: {exc.msg}"))


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        yield from json_rows(lines, str(path))


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")


def shard_files(path: Path) -> list[Path]:
    """The files a dataset path names: itself, a folder's shards, or a glob's matches, in name
    order (so rows come in the same order on every run)."""
    if path.is_dir():
        return sorted(f for f in path.iterdir() if f.name.endswith(SUFFIXES))
    if glob.has_magic(str(path)):
        return sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
    return [path]


def read_numbered_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield `(line or row number, decoded row)`; undecodable lines come as a `DataError`."""
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    # `.json` too: public comparison dumps (summarize-from-feedback) are JSON lines named so.
    if path.name.endswith(SUFFIXES[1:]):
        return _json_lines(path)
    raise ValueError(f"{path}: unsupported format (use .jsonl(.gz), .json lines or .parquet)")


def collect(parsed: Iterable[Comparison | DataError], *, on_error: OnError = "raise") -> LoadResult:
    """Gather parsed rows, raising on the first error or skipping and counting them."""
    result = LoadResult([])
    for item in parsed:
        if isinstance(item, DataError):
            if on_error == "raise":
                raise item
            result.skipped.append(item.error)
        else:
            result.comparisons.append(item)
    return result


def load_comparisons(path: str | os.PathLike[str], *, on_error: OnError = "raise") -> LoadResult:
    """Load a file (or a folder or glob of shards) of the normalized schema `{user_id, prompt,
    chosen, rejected, meta}`."""
    shards = shard_files(resolve_dataset(path))
    if not shards:
        raise FileNotFoundError(f"{path}: no shards ({', '.join(SUFFIXES)})")

    def parse_all() -> Iterator[Comparison | DataError]:
        for shard in shards:
            for number, row in read_numbered_rows(shard):
                if isinstance(row, DataError):
                    yield row
                    continue
                try:
                    yield parse_comparison(row, source=str(shard), line=number)
                except DataError as exc:
                    yield exc

    return collect(parse_all(), on_error=on_error)


def write_comparisons(comparisons: Iterable[Comparison], path: str | os.PathLike[str]) -> None:
    """Write the normalized schema as JSONL (gzipped when the name ends in `.gz`)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as out:
        for comparison in comparisons:
            out.write(json.dumps(comparison.to_row(), ensure_ascii=False) + "\n")
