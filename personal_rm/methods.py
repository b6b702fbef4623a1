"""Method names, as used on the command line and in `accuracy.json`, mapped to models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from personal_rm.baselines import GlobalBT, LowRankBT, PerUserBT
from personal_rm.mrm import VARIANTS, MetaRewardModel
from personal_rm.reward import RewardModel


def _rubric(config: Any) -> Any:
    """The rubric judge, its criteria embedded by the MiniLM that embeds the data (cached)."""
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.pgenrm.rubric import RubricJudge

    return RubricJudge(config.rubric, encoder=CachedEncoder(MiniLMEncoder(), config.cache_dir))


def _rubric_tts(config: Any) -> Any:
    from personal_rm.pgenrm.scaling import ScaledRewardModel

    return ScaledRewardModel(_rubric(config), config.prototypes, config.scaling)


# Each builder takes the job's config (whatever sections it has) and returns a fresh model.
METHODS: dict[str, Callable[[Any], RewardModel]] = {
    "bt_global": lambda config: GlobalBT(config.baselines),
    "bt_user": lambda config: PerUserBT(config.baselines),
    "lowrank": lambda config: LowRankBT(config.baselines),
    **{
        name: lambda config, name=name: MetaRewardModel(
            config.mrm.model_copy(update=VARIANTS[name]), name=name
        )
        for name in VARIANTS
    },
    "rubric": _rubric,
    "rubric_tts": _rubric_tts,
}


def build_method(name: str, config: Any) -> RewardModel:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](config)
