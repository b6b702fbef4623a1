r"""SmolLM2-135M as the P-GenRM judge on held-out LLMFAO comparisons: parse rate, accuracy, cost.

    python -m bench.smollm2_judge                                   # zero-shot, transformers
    python -m bench.smollm2_judge --backend.model results/genrm_smollm2/sft --name sft
    python -m bench.smollm2_judge --backend.kind vllm --backend.model smollm2-135m \
        --backend.dtype bfloat16 --backend.enforce_eager true --backend.max_model_len 2048 \
        --name zero_shot_vllm

`jobs.score_genrm` with this model's defaults: the first `max_comparisons` test comparisons
of the unseen users (held out from chain data and training), each with its user's training
comparisons as history under the default prompt budget, n samples each. Writes
`bench/results/smollm2_judge_<name>.json` (the job's report, config beside it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from jobs.score_genrm import ScoreGenRMConfig, run
from personal_rm.backends import BackendConfig, SamplingConfig, TransformersBackendConfig
from personal_rm.config import parse_config


class SmolLM2JudgeConfig(ScoreGenRMConfig):
    name: str = Field("zero_shot", description="Names the result file.")
    out: Path = Field(Path("results/smollm2_judge"), description="The job's own outputs.")
    users: list[Literal["seen", "unseen"]] = Field(["unseen"], description="Held-out users.")
    max_comparisons: int | None = Field(24, description="Test comparisons scored.")
    n: int = Field(1, description="Chains sampled per comparison.")
    batch_size: int = Field(8, description="Comparisons per backend call.")
    backend: BackendConfig = TransformersBackendConfig(model="smollm2-135m", batch_size=8)
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=256, seed=0)


def main(argv: list[str]) -> None:
    config = parse_config(SmolLM2JudgeConfig, argv, description=__doc__)
    report = run(config)
    target = Path(f"bench/results/smollm2_judge_{config.name}.json")
    command = "python -m bench.smollm2_judge " + " ".join(argv)
    target.write_text(json.dumps({"command": command.strip(), **report}, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
