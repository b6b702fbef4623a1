"""Chain data on Ray: teacher backends in actors, tasks spread over them by an `ActorPool`.

Each actor builds its backend once (a vLLM engine, a transformers model, an HTTP client, or
the heuristic stand-in) and turns batches of tasks into chain rows; the driver appends rows
to the JSONL as they arrive, so an interrupted run loses at most the batches in flight and a
rerun skips every comparison already written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool
from tqdm.auto import tqdm

from personal_rm.backends import BackendConfig, SamplingConfig, build_backend
from personal_rm.pgenrm.chain_data import chain_row, done_ids, open_for_append
from personal_rm.pgenrm.llm_judge import JudgeTask, judge_tasks
from personal_rm.pgenrm.prompt import PromptBudget


@ray.remote
class ChainBuilder:
    def __init__(self, backend: BackendConfig):
        self.backend = build_backend(backend)

    def build(
        self,
        tasks: Sequence[JudgeTask],
        tries: int,
        sampling: SamplingConfig,
        budget: PromptBudget,
        provenance: dict[str, Any],
    ) -> list[dict]:
        """R = `tries` chains per task in one call (one prefill each on vLLM); keep the first
        acceptable one (rejection sampling)."""
        judged = judge_tasks(self.backend, tasks, n=tries, sampling=sampling, budget=budget)
        return [chain_row(j, budget, provenance) for j in judged]


def build_chains(
    tasks: Sequence[JudgeTask],
    out: Path,
    teacher: BackendConfig,
    *,
    tries: int,
    sampling: SamplingConfig,
    budget: PromptBudget,
    provenance: dict[str, Any],
    num_actors: int = 2,
    actor_options: dict[str, Any] | None = None,
    batch_size: int = 8,
) -> dict[str, int]:
    """Append a row per task not yet in `out`; return counts of this run's work."""
    done = done_ids(out)
    todo = [t for t in tasks if t.id not in done]
    counts = {"skipped_done": len(tasks) - len(todo), "written": 0, "accepted": 0}
    if not todo:
        return counts
    actors = [
        ChainBuilder.options(**(actor_options or {})).remote(teacher)
        for _ in range(min(num_actors, len(todo)))
    ]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    pool = ActorPool(actors)
    with open_for_append(out) as sink, tqdm(total=len(todo), desc="chains", unit="cmp") as bar:
        for rows in pool.map_unordered(
            lambda actor, batch: actor.build.remote(batch, tries, sampling, budget, provenance),
            batches,
        ):
            sink.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            sink.flush()
            counts["written"] += len(rows)
            counts["accepted"] += sum("completion" in row for row in rows)
            bar.update(len(rows))
            bar.set_postfix(accepted=f"{counts['accepted']}/{counts['written']}")
    for actor in actors:
        ray.kill(actor)
    return counts
