"""Score held-out comparisons with a generative judge through any backend; report honestly.

    python -m jobs.score_genrm --backend.model results/genrm/rl --out results/genrm/score
    python -m jobs.score_genrm --backend.kind vllm --backend.model results/genrm/rl --n 8
    python -m jobs.score_genrm --backend.kind openai --backend.base_url http://127.0.0.1:8001/v1

Each test comparison of the seen (and unseen) users is judged with h of the user's training
comparisons as history, n chains sampled per comparison; its margin is the mean recomputed
final-score difference over the chains that parse. Unparsed comparisons and ties count as
wrong; the report also gives ties as 0.5 and the parsed-only accuracy that public code
reports, and parse failures by cause, wall time and a few raw generations. Writes
`report.json` and `config.yaml` to `--out`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from personal_rm.backends import BackendConfig, SamplingConfig, TransformersBackendConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.pgenrm.chain_data import ChainDataConfig
from personal_rm.prepare import SplitConfig


class ScoreGenRMConfig(ChainDataConfig):
    out: Path = Field(Path("results/genrm/score"), description="Folder for report.json.")
    n: int = Field(4, description="Chains sampled per comparison.")
    users: list[Literal["seen", "unseen"]] = Field(
        ["seen", "unseen"], description="Which users' test comparisons to score."
    )
    max_comparisons: int | None = Field(None, description="Only the first N per user group.")
    batch_size: int = Field(16, description="Comparisons per backend call (progress steps).")
    keep_texts: int = Field(4, description="Raw generations kept in the report per user group.")
    backend: BackendConfig = TransformersBackendConfig()
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_new_tokens=1536)
    split: SplitConfig = SplitConfig()


def run(config: ScoreGenRMConfig) -> dict:
    import time

    from personal_rm.backends import build_backend
    from personal_rm.pgenrm.chain_data import load_split, select
    from personal_rm.pgenrm.llm_judge import judge_in_batches, judge_report, make_tasks

    comparisons, split = load_split(config, config.split)
    backend = build_backend(config.backend)
    report = {"backend": config.backend.model_dump(), "n": config.n}
    for group in config.users:
        users = split.seen_users if group == "seen" else split.unseen_users
        test = select(comparisons, split, split.test, users)[: config.max_comparisons]
        history = select(comparisons, split, split.train, users)
        tasks = make_tasks(test, history, config.history_size, config.seed)
        start_s = time.perf_counter()
        judged = judge_in_batches(
            backend,
            tasks,
            n=config.n,
            sampling=config.sampling,
            budget=config.budget(),
            batch_size=config.batch_size,
            desc=f"{group} users",
        )
        wall_s = time.perf_counter() - start_s
        report[group] = judge_report(judged, seed=config.seed)
        r = report[group]
        r["wall_s"] = round(wall_s, 1)
        r["samples_per_s"] = round(r["n_samples"] / wall_s, 4)
        r["texts"] = [t for j in judged for t in j.texts][: config.keep_texts]
        print(
            f"{group}: {r['n_comparisons']} comparisons, parse failures "
            f"{r['parse_failure_rate']:.1%} {r['failures']}, accuracy "
            f"{r['accuracy']['acc_sample']:.3f} (ties 0.5: {r['accuracy_ties_half_sample']:.3f}, "
            f"parsed only: {r['accuracy_parsed_only']['acc_sample']:.3f})"
        )
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "report.json").write_text(json.dumps(report, indent=2))
    dump_config(config, config.out / "config.yaml")
    print(f"wrote {config.out}/report.json")
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(ScoreGenRMConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
