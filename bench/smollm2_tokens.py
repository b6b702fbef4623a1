"""How long the judge's prompt and chain are in SmolLM2's tokens, on LLMFAO's training rows.

    python -m bench.smollm2_tokens            # -> bench/results/smollm2_tokens.json

Every seen user's training comparison is rendered as `jobs.build_chains` renders it (the
default `ChainDataConfig` budget), chat-templated as the model reads it; the chain is the
stand-in teacher's, as the SFT target is written. For scale, the same rows without any budget
(full texts, every drawn example) and the chain as spaced JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from pydantic import Field

from personal_rm.config import parse_config
from personal_rm.pgenrm.chain_data import ChainDataConfig
from personal_rm.prepare import SplitConfig

OUT = Path("bench/results/smollm2_tokens.json")


class TokensConfig(ChainDataConfig):
    out: Path = Field(OUT, description="Where the figures go.")
    split: SplitConfig = SplitConfig()


def spread(values: list[int]) -> dict[str, float]:
    p = np.percentile(values, [10, 50, 90])
    return {
        "p10": float(p[0]),
        "median": float(p[1]),
        "p90": float(p[2]),
        "max": int(max(values)),
        "mean": round(float(np.mean(values)), 1),
    }


def run(config: TokensConfig) -> dict:
    from transformers import AutoTokenizer

    from personal_rm.backends import SamplingConfig, chat_text
    from personal_rm.backends.heuristic import HeuristicTeacher
    from personal_rm.models import resolve_model
    from personal_rm.pgenrm.chain_data import load_split, select
    from personal_rm.pgenrm.llm_judge import make_tasks
    from personal_rm.pgenrm.parser import parse_chain
    from personal_rm.pgenrm.prompt import (
        CHAIN_END,
        CHAIN_START,
        SYSTEM_PROMPT,
        PromptBudget,
        chain_json,
        token_counter,
    )

    count = token_counter(config.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.tokenizer))
    comparisons, split = load_split(config, config.split)
    train = select(comparisons, split, split.train, split.seen_users)
    tasks = make_tasks(train, train, config.history_size, config.seed)

    def prompt_tokens(budget: PromptBudget) -> tuple[list[int], list[int], list]:
        messages = [budget.render(t.request()) for t in tasks]
        tokens = [count(chat_text(tokenizer, m)) for m in messages]
        shown = [m[1]["content"].count("<example>") for m in messages]
        return tokens, shown, messages

    sized, shown, messages = prompt_tokens(config.budget())
    unsized, drawn, _ = prompt_tokens(PromptBudget())
    chains = [c[0] for c in HeuristicTeacher().generate(messages, 1, SamplingConfig())]
    chain_tokens = [count(c) for c in chains]
    body = [count(c.split(CHAIN_START)[1].split(CHAIN_END)[0].strip()) for c in chains]
    spaced = [count(json.dumps(chain_json(parse_chain(c)))) for c in chains]  # all parse
    report = {
        "command": "python -m bench.smollm2_tokens",
        "tokenizer": config.tokenizer,
        "rows": len(tasks),
        "rows_are": "seen users' LLMFAO training comparisons (jobs.build_chains' inputs)",
        "budget": config.budget().__dict__,
        "history_size_drawn": config.history_size,
        "system_prompt_tokens": count(SYSTEM_PROMPT),
        "prompt_tokens": spread(sized),
        "history_examples_shown": spread(shown),
        "chain_tokens": spread(chain_tokens),
        "prompt_plus_chain_tokens": spread(list(np.add(sized, chain_tokens))),
        "unsized_prompt_tokens": spread(unsized),
        "unsized_history_examples": spread(drawn),
        "chain_json_tokens": spread(body),
        "chain_json_tokens_if_spaced": spread(spaced),
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run(parse_config(TokensConfig, sys.argv[1:], description=__doc__))
