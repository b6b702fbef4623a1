"""What do N chains cost against one, when they are asked for in one batched call?

    python -m bench.chain_sampling_cost --max_new_tokens 128

The transformers backend on the tiny random-weight Llama (`tiny_lm`), one judge prompt with a
4-comparison LLMFAO history: wall time of `generate(n=8)` (one call: one prefill shared by
the 8 samples, then batched decoding) against `generate(n=1)`, against 8 sequential `n=1`
calls (what a naive sampler pays), and against transformers' own `num_return_sequences=8`
(batched decoding, but the prompt prefilled 8 times). Every sample is forced to exactly
`max_new_tokens` (random weights would stop at a chance EOS, and an n=1 sample that stops
early makes any ratio meaningless). One torch thread, as a replica on a shared box gets;
repetitions are interleaved and CPU time is reported next to wall time, because the box is
shared. Writes bench/results/chain_sampling_cost.json.
(The rubric judge's N=8 / N=1 ratio is measured by `bench.scaling_real`.)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config


class CostBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, description="Chains per request in the batched call.")
    max_new_tokens: int = Field(128, description="Tokens per sample.")
    history: int = Field(4, description="Comparisons of history in the prompt.")
    reps: int = Field(5, description="Timed repetitions (median reported).")
    threads: int = Field(1, description="torch threads.")
    out: Path = Field(Path("bench/results/chain_sampling_cost.json"), description="Result JSON.")


def run(config: CostBenchConfig) -> dict:
    import numpy as np
    import torch

    from personal_rm.backends import SamplingConfig, chat_text
    from personal_rm.backends.transformers_backend import TransformersBackend
    from personal_rm.data import load_comparisons, resolve_dataset
    from personal_rm.pgenrm.prompt import JudgeRequest, render_messages
    from tests.tiny_lm import build_tiny_lm

    torch.set_num_threads(config.threads)
    comparisons = load_comparisons(resolve_dataset("llmfao")).comparisons[: config.history + 1]
    *history, new = comparisons
    request = JudgeRequest(
        tuple((c.prompt, c.chosen, c.rejected) for c in history),
        new.prompt,
        (new.chosen, new.rejected),
    )
    messages = render_messages(request, max_text_chars=400)
    with tempfile.TemporaryDirectory() as folder:
        backend = TransformersBackend.load(str(build_tiny_lm(folder, [messages[1]["content"]])))
    backend.model.generation_config.min_new_tokens = config.max_new_tokens  # equal work
    tokens = backend.tokenizer([chat_text(backend.tokenizer, messages)], return_tensors="pt")
    prompt_tokens = tokens["input_ids"].shape[1]

    def sample(n: int, seed: int = 0) -> list[list[str]]:
        sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, seed=seed)
        return backend.generate([messages], n, sampling)

    @torch.inference_mode()
    def repeat_prompt(n: int) -> None:
        backend.model.generate(
            **tokens, max_new_tokens=config.max_new_tokens, do_sample=True, num_return_sequences=n
        )

    calls = {
        "n1": lambda: sample(1),
        f"n{config.n}_batched": lambda: sample(config.n),
        f"n{config.n}_sequential": lambda: [sample(1, seed) for seed in range(config.n)],
        f"n{config.n}_num_return_sequences": lambda: repeat_prompt(config.n),
    }
    # Interleaved repetitions: on a shared box the load drifts, and a ratio taken within one
    # repetition sees the same load on both sides. CPU time (one thread) ignores the load.
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    sample(1)  # warm-up
    for _ in range(config.reps):
        for name, call in calls.items():
            w, c = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    report: dict = {"prompt_tokens": prompt_tokens}
    for name in calls:
        report[f"{name}_wall_s"] = float(np.median(wall[name]))
        report[f"{name}_cpu_s"] = float(np.median(cpu[name]))
        report[f"{name}_over_n1_wall"] = float(np.median(np.divide(wall[name], wall["n1"])))
        report[f"{name}_over_n1_cpu"] = float(np.median(np.divide(cpu[name], cpu["n1"])))
    report["load_average"] = os.getloadavg()  # the box is shared: timings are as quiet as it
    report["config"] = config.model_dump(mode="json")
    print(
        f"transformers, tiny Llama, {prompt_tokens}-token prompt, {config.max_new_tokens} new "
        f"tokens per sample, {config.threads} thread(s), median of {config.reps} interleaved "
        f"reps; n=1 takes {report['n1_wall_s']:.2f}s; load average {os.getloadavg()[0]:.1f}"
    )
    print("| call | wall / n=1 | CPU / n=1 |\n|---|---|---|")
    for name in calls:
        wall_ratio, cpu_ratio = report[f"{name}_over_n1_wall"], report[f"{name}_over_n1_cpu"]
        print(f"| {name} | {wall_ratio:.2f}x | {cpu_ratio:.2f}x |")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(CostBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
