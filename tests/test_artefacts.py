"""Serving state on disk is data: a saved state loads back to the same router and shards, field
for field, and loading it runs no code, whatever sits in the directory."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import pickle
import shutil
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from personal_rm.artefacts import ArtefactError, Format, load_tensors, save_tensors
from personal_rm.features import PairSet
from personal_rm.methods import MethodsConfig
from personal_rm.mrm import MetaRewardModel, MRMConfig, MRMNet, split_support
from personal_rm.pgenrm.scaling import sampler_of
from personal_rm.serving.state import (
    ROUTER_FILE,
    Router,
    build_state,
    load_router,
    load_shard,
    save_state,
    shard_scores,
)

from synthetic_users import mixture_users

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 16
CONFIG = MethodsConfig.model_validate(
    {
        "mrm": {"num_bases": 4, "epochs": 3},
        "rubric": {"training": {"epochs": 3}},
        "prototypes": {"k": 3},
        "scaling": {"n": 4, "m": 2},
    }
)
# Not part of an artefact: the encoder (the loader is given one), the scaled model's memo of
# posterior draws (a cache), and the router index's member histories (the shards hold them).
NOT_SAVED = ["*.encoder", "model.sampler.memo", "model.index.histories", "model.index._history*"]


class HashEncoder:
    model_id, dim = "hash", DIM

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rngs = [np.random.default_rng(zlib.crc32(t.encode())) for t in texts]
        return np.stack([r.normal(size=DIM) for r in rngs]).astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    data = mixture_users(60, 12, dim=DIM, n_bases=3, concentration=0.1, scale=20, seed=1)
    users, pairs = data.user_names, data.pairs
    train = pairs.take(np.flatnonzero(np.isin(pairs.user_ids, users[:45])))
    test = pairs.take(np.flatnonzero(np.isin(pairs.user_ids, users[45:])))
    encoder = HashEncoder()
    mrm = MetaRewardModel(CONFIG.mrm)
    mrm.fit(train)
    router, shards = build_state(train, None, CONFIG, encoder, mrm)
    directory = tmp_path_factory.mktemp("state")
    save_state(router, shards, directory)
    return {"router": router, "shards": shards, "dir": directory, "encoder": encoder, "test": test}


def assert_restored(saved, loaded, path: str = "") -> None:
    """Every attribute of `saved`, at every depth, equals `loaded`'s (bar `NOT_SAVED`)."""
    if any(fnmatch.fnmatch(path, pattern) for pattern in NOT_SAVED):
        return
    where = path or "the object"
    if isinstance(saved, torch.nn.Module):
        assert type(loaded) is type(saved), where
        public = {k: v for k, v in vars(saved).items() if not k.startswith("_")}
        assert_restored(public, {k: getattr(loaded, k) for k in public}, path)
        assert_restored(saved.state_dict(), loaded.state_dict(), f"{path}.state_dict")
    elif isinstance(saved, (np.ndarray, torch.Tensor)):
        saved, loaded = np.asarray(saved), np.asarray(loaded)
        assert saved.dtype == loaded.dtype, where
        np.testing.assert_array_equal(loaded, saved, err_msg=where)
    elif isinstance(saved, BaseModel):
        assert loaded == saved, where
    elif isinstance(saved, dict):
        assert set(loaded) == set(saved), where
        for key, value in saved.items():
            assert_restored(value, loaded[key], f"{path}.{key}".lstrip("."))
    elif isinstance(saved, (list, tuple)):
        assert type(loaded) is type(saved) and len(loaded) == len(saved), where
        for i, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            assert_restored(a, b, f"{path}[{i}]")
    elif hasattr(saved, "__dict__"):
        assert type(loaded) is type(saved), where
        assert_restored(vars(saved), vars(loaded), path)
    else:
        assert loaded == saved, where


def test_the_state_loads_back_field_for_field_and_serves_alike(world) -> None:
    router, shards, directory = world["router"], world["shards"], world["dir"]
    names = sorted(p.name for p in directory.iterdir())
    stems = ["router", *(f"prototype-{s.prototype}" for s in shards)]
    assert names == sorted(f"{s}.{x}" for s in stems for x in ("json", "safetensors"))
    header = json.loads((directory / ROUTER_FILE).read_text())
    assert (header["format"], header["version"]) == ("personal-rm/state", 3)

    loaded = load_router(directory, world["encoder"])
    assert_restored(router, loaded)
    assert loaded.model.judge is loaded.judges["rubric"]  # one judge, saved once
    assert loaded.model.encoder is world["encoder"]
    assert all(j.encoder is world["encoder"] for j in loaded.judges.values())
    for shard in shards:
        assert_restored(shard, load_shard(directory, shard.prototype))

    # A request served from the loaded state: same user vector, neighbours, their histories
    # and scores, to the last bit, for a user with history and for a cold one, both judges.
    support, query = split_support(world["test"], 4, seed=0)
    user = support.users()[0]
    request = np.stack([query.chosen[0], query.rejected[0]])
    by_id = {s.prototype: s for s in shards}
    for name, history in [(user, support.for_user(user)), ("cold", PairSet.empty(DIM))]:
        before = serve(router, by_id.__getitem__, name, history, request)
        after = serve(loaded, partial(load_shard, directory), name, history, request)
        assert len(before[1]) == CONFIG.scaling.m
        assert_restored(before, after)


def serve(router: Router, shard_of: Callable, user: str, history: PairSet, request: np.ndarray):
    """What the ingress and a shard do for one request (`serve_app`), for each judge."""
    vector = router.user_vector(user, history, request)
    shard = shard_of(router.prototype(vector))
    near = shard.neighbours(vector, CONFIG.scaling.m, exclude=user)
    scores = [
        asyncio.run(
            shard_scores(
                shard,
                sampler_of(router.judges[method]),
                user,
                history,
                vector,
                request,
                router.model.scaling,
                lambda users: [shard.history(u) for u in users],
            )
        ).scores
        for method in ("rubric", "mrm")
    ]
    return vector, near, [shard.history(u) for u in near], scores


class Plant:
    """Unpickling this creates `marker`: what any pickle can do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_loading_a_state_runs_no_code_from_it(world, tmp_path) -> None:
    directory, marker = tmp_path / "state", tmp_path / "pwned"
    shutil.copytree(world["dir"], directory)
    bomb = pickle.dumps(Plant(marker))
    for old in ("router.pkl", "prototype-0.pkl"):  # the pickle-based state's file names
        (directory / old).write_bytes(bomb)
    load_router(directory, world["encoder"])
    load_shard(directory, 0)
    assert not marker.exists()

    for planted, load in [
        ("router.safetensors", lambda: load_router(directory)),
        ("router.json", lambda: load_router(directory)),
        ("prototype-0.safetensors", lambda: load_shard(directory, 0)),
    ]:
        saved = (directory / planted).read_bytes()
        (directory / planted).write_bytes(bomb)
        with pytest.raises(ArtefactError, match=planted.replace(".", r"\.")):
            load()
        (directory / planted).write_bytes(saved)
    assert not marker.exists()


def test_a_foreign_version_or_a_broken_file_is_an_error_naming_the_file(world, tmp_path) -> None:
    directory = tmp_path / "state"
    shutil.copytree(world["dir"], directory)
    meta = directory / ROUTER_FILE
    header = json.loads(meta.read_text())
    meta.write_text(json.dumps({**header, "version": 1}))  # a state from before judge kinds
    with pytest.raises(ArtefactError, match=r"router\.json: format 'personal-rm/state' version 1"):
        load_router(directory)
    meta.write_text(json.dumps({**header, "meta": {**header["meta"], "judges": {}}}))
    with pytest.raises(ArtefactError, match=r"router\.json: unreadable contents"):
        load_router(directory)

    arrays = directory / "prototype-1.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-8])  # truncated
    with pytest.raises(ArtefactError, match=r"prototype-1\.safetensors"):
        load_shard(directory, 1)
    shutil.copy(directory / "prototype-0.safetensors", arrays)  # another shard's arrays
    with pytest.raises(ArtefactError, match=r"prototype-1\.safetensors: its arrays are not"):
        load_shard(directory, 1)
    arrays.unlink()
    with pytest.raises(ArtefactError, match=r"prototype-1\.safetensors: missing"):
        load_shard(directory, 1)


def test_a_state_dict_round_trips_with_its_metadata(tmp_path) -> None:
    """What `mrm.save_model` needs: a torch state_dict and JSON metadata, no pickle."""
    config = MRMConfig(num_bases=3)
    net = MRMNet(DIM, config)
    fmt = Format("personal-rm/mrm", 1)
    tensors = {**net.state_dict(), "half": torch.ones(2, dtype=torch.bfloat16)}
    save_tensors(tmp_path / "model", tensors, {"dim": DIM, "config": config.model_dump()}, fmt)
    loaded, meta = load_tensors(tmp_path / "model", fmt)
    assert loaded["half"].dtype == torch.bfloat16
    rebuilt = MRMNet(meta["dim"], MRMConfig.model_validate(meta["config"]))
    rebuilt.load_state_dict({k: v for k, v in loaded.items() if k != "half"})
    assert_restored(net.state_dict(), rebuilt.state_dict())
    with pytest.raises(ArtefactError, match=r"model\.json: format 'personal-rm/mrm' version 1"):
        load_tensors(tmp_path / "model", Format("personal-rm/mrm", 2))
