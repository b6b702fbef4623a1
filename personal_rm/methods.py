"""Method names, as used on the command line and in `accuracy.json`, mapped to models, and
the one config model of their settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from personal_rm.baselines import GlobalBT, LowRankBT, PerUserBT
from personal_rm.config import Config
from personal_rm.mrm import PAPER_RECIPE, VARIANTS, MetaRewardModel, MRMConfig
from personal_rm.pgenrm.prototypes import PrototypeConfig
from personal_rm.pgenrm.rubric import RubricConfig
from personal_rm.pgenrm.scaling import TTSConfig
from personal_rm.reward import RewardModel
from personal_rm.shrinkage import ShrinkageConfig, ShrunkMRM


class MethodsConfig(Config):
    """The personalized methods' settings, one section each. Every job that fits or serves
    them (evaluate, pipeline, serve, sweep) holds this one model, so each runs the defaults
    that were validated, from the one place they are set: the sections' own classes."""

    mrm: MRMConfig = MRMConfig()
    rubric: RubricConfig = RubricConfig()
    prototypes: PrototypeConfig = PrototypeConfig()
    scaling: TTSConfig = TTSConfig()
    shrinkage: ShrinkageConfig = ShrinkageConfig()


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
    "mrm_shrunk": lambda config: ShrunkMRM(config.mrm, config.shrinkage, config.baselines),
    "mrm_paper": lambda config: MetaRewardModel(
        config.mrm.model_copy(update=PAPER_RECIPE), name="mrm_paper"
    ),
    "rubric": _rubric,
    "rubric_tts": _rubric_tts,
}


def build_method(name: str, config: Any) -> RewardModel:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](config)
