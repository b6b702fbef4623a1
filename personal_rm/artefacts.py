"""Artefacts: state on disk as data, never code.

An artefact `<stem>` is two files: `<stem>.safetensors`, the arrays, and `<stem>.json`, the
metadata under a format name and version, `{"format": ..., "version": ..., "arrays": {name:
shape}, "meta": ...}`. Loading parses both (safetensors and json execute nothing from a file,
unlike a pickle) and checks the format, the version and that the two files belong together,
so a file from shared storage is read, not run, and a renamed class breaks nothing. Any
problem is an `ArtefactError` that names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

T = TypeVar("T")


class Format(NamedTuple):
    name: str  # e.g. "personal-rm/state"
    version: int  # bumped whenever a reader of the previous version would misread a file


class Artefact(NamedTuple):
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]  # JSON values only


class ArtefactError(ValueError):
    """A missing, corrupt or foreign artefact file (the message names it)."""


def join(parts: Mapping[str, Artefact]) -> Artefact:
    """Named sub-artefacts as one: arrays `name.key`, metadata `{name: meta}`."""
    if any("." in name for name in parts):
        raise ValueError(f"a part's name has no '.': {list(parts)}")
    arrays = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.arrays.items()}
    return Artefact(arrays, {name: part.meta for name, part in parts.items()})


def part(artefact: Artefact, name: str) -> Artefact:
    """The sub-artefact `name` of a `join`."""
    prefix = f"{name}."
    arrays = {k[len(prefix) :]: v for k, v in artefact.arrays.items() if k.startswith(prefix)}
    return Artefact(arrays, artefact.meta[name])


def save(stem: str | Path, artefact: Artefact, fmt: Format) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in artefact.arrays.items()}
    _write(stem, lambda path: safetensors.numpy.save_file(arrays, path), arrays, artefact.meta, fmt)


def load(stem: str | Path, fmt: Format, build: Callable[[Artefact], T]) -> T:
    """`build` of the artefact at `stem`. What `build` raises on contents it cannot use (a
    field missing or of the wrong kind, a parameter of the wrong shape) is reported as the
    file's corruption."""
    meta, arrays = _read(stem, fmt, safetensors.numpy.load_file)
    try:
        return build(Artefact(arrays, meta))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ArtefactError(f"{Path(f'{stem}.json')}: unreadable contents ({error!r})") from error


def save_tensors(
    stem: str | Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any], fmt: Format
) -> None:
    """A torch `state_dict` and its metadata (moved to CPU; dtypes kept, bfloat16 included)."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _write(stem, lambda path: safetensors.torch.save_file(flat, path), flat, meta, fmt)


def load_tensors(stem: str | Path, fmt: Format) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict on CPU, metadata) saved by `save_tensors`."""
    meta, tensors = _read(stem, fmt, safetensors.torch.load_file)
    return tensors, meta


def _write(
    stem: str | Path, write: Callable[[Path], None], arrays: Mapping, meta: dict, fmt: Format
) -> None:
    """Arrays, then metadata, each through a temporary file and a rename: a reader never sees
    half a file, and a complete `.json` means its arrays were written first."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    header = {"format": fmt.name, "version": fmt.version, "arrays": shapes, "meta": meta}
    _replace(Path(f"{stem}.safetensors"), write)
    _replace(Path(f"{stem}.json"), lambda path: path.write_text(json.dumps(header)))


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _read(stem: str | Path, fmt: Format, load_arrays: Callable[[str], dict]) -> tuple[dict, dict]:
    meta_path, arrays_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    for path in (meta_path, arrays_path):
        if not path.is_file():
            raise ArtefactError(f"{path}: missing")
    try:
        header = json.loads(meta_path.read_text())
        found = (header["format"], header["version"])
        shapes = header["arrays"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ArtefactError(f"{meta_path}: not a {fmt.name} metadata file ({error!r})") from error
    if found != tuple(fmt):
        raise ArtefactError(
            f"{meta_path}: format {found[0]!r} version {found[1]!r}; this code reads "
            f"{fmt.name!r} version {fmt.version}"
        )
    try:
        arrays = load_arrays(str(arrays_path))
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ArtefactError(f"{arrays_path}: not a safetensors file ({error!r})") from error
    if {k: list(v.shape) for k, v in arrays.items()} != shapes:
        raise ArtefactError(f"{arrays_path}: its arrays are not the ones {meta_path} lists")
    return header["meta"], arrays
