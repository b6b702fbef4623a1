"""TRL's GRPOTrainer on CPU, rewarded by the live scoring service: personalized RL end to end.

    python -m bench.trl_grpo                    # writes bench/results/trl_grpo.{json,log}
    python -m bench.trl_grpo --method rubric --steps 5

The policy is a tiny random-weight Llama (`tests.tiny_lm`, its tokenizer fit to the prompts);
the dataset's rows are (prompt, user_id): the `users` users with the most stored comparisons,
each with `prompts_per_user` prompts of their own history (no prompt shared, so that a logged
prompt names its user). Every reward comes from `POST /get_reward` through
`personal_rm.client.PersonalReward`, unchanged. The checks are read from the server's side:
after each step a callback reads the server's reward ledger (`/healthz`, so keys must be off),
and the run asserts that the rewards served each step are the ones TRL logged for that step
(count and mean), that the server served exactly the rewards TRL consumed, that re-scoring the
last step's logged completions gives TRL's logged rewards back, and that the weights moved.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field
from transformers import TrainerCallback

from bench.service import most_history, start
from personal_rm.client import PersonalReward, as_text
from personal_rm.config import parse_config
from personal_rm.serving.store import FeedbackStore, open_store
from serve_app.deploy import ServeJobConfig


class TRLGRPOConfig(ServeJobConfig):
    method: str = Field("mrm", description="The server's reward method (serve_app/rl.py).")
    users: int = Field(2, ge=1, description="Users of the dataset: those with most history.")
    prompts_per_user: int = Field(2, ge=1, description="Prompts of each user's own history.")
    steps: int = Field(3, ge=1, description="GRPO steps; each scores every prompt's group.")
    num_generations: int = Field(4, ge=2, description="GRPO's group size G.")
    max_completion_length: int = Field(16, ge=1, description="Tokens per completion.")
    learning_rate: float = Field(
        1e-3, gt=0, description="High, for a random tiny policy: a few steps must move it."
    )
    seed: int = Field(0, description="Seeds the policy's weights and TRL's sampling.")
    out: Path = Field(Path("bench/results/trl_grpo"), description="Writes OUT.json, OUT.log.")


def ledger(http: httpx.Client) -> dict[str, float]:
    return http.get("/healthz").raise_for_status().json()["get_reward"]


class ServerLedger(TrainerCallback):
    """After each step, what the server says it served during that step."""

    def __init__(self, http: httpx.Client):
        self.http, self.last, self.steps = http, ledger(http), []

    def on_step_end(self, args, state, control, **kwargs):
        now = ledger(self.http)
        served = {key: now[key] - self.last[key] for key in now}
        self.steps.append({"step": state.global_step, **served})
        self.last = now


def dataset_rows(store: FeedbackStore, users: int, per_user: int) -> list[dict[str, Any]]:
    """The `users` users with the most stored comparisons (ties by id), each with the first
    `per_user` prompts of their history that no earlier user took."""
    rows, taken = [], set()
    for user in most_history(store, users):
        mine = [c.prompt for c in store.history(user) if c.prompt not in taken]
        for prompt in list(dict.fromkeys(mine))[:per_user]:
            taken.add(prompt)
            rows.append({"prompt": [{"role": "user", "content": prompt}], "user_id": user})
    return rows


@dataclass
class Run:
    trainer: Any  # trl.GRPOTrainer, imported lazily (a 5 s import)
    reward: PersonalReward
    served: ServerLedger
    user_of: dict[str, str]  # prompt text -> its user
    before: dict[str, Any]  # the policy's initial parameters
    batch: int  # completions a step


def grpo_run(config: TRLGRPOConfig, base_url: str, work_dir: Path) -> Run:
    """A GRPOTrainer on the tiny policy, rewarded by the server at `base_url`, trained."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tests.tiny_lm import build_tiny_lm

    store = open_store(config.app.store_location)
    rows = dataset_rows(store, config.users, config.prompts_per_user)
    users = {row["user_id"] for row in rows}
    corpus = [f"{c.prompt}\n{c.chosen}" for u in sorted(users) for c in store.history(u)]
    policy = build_tiny_lm(work_dir / "policy", corpus, seed=config.seed)
    model = AutoModelForCausalLM.from_pretrained(policy)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = len(rows) * config.num_generations  # every prompt's group, every step
    args = GRPOConfig(
        output_dir=str(work_dir / "trainer"),
        max_steps=config.steps,
        per_device_train_batch_size=batch,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        seed=config.seed,
        disable_tqdm=True,
    )
    reward = PersonalReward(base_url, method=config.method)
    served = ServerLedger(httpx.Client(base_url=base_url, timeout=30))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(policy),
        callbacks=[served],
    )
    trainer.train()
    user_of = {as_text(row["prompt"]): row["user_id"] for row in rows}
    return Run(trainer, reward, served, user_of, before, batch)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def summarize(run: Run, config: TRLGRPOConfig) -> dict[str, Any]:
    """What the server served against what TRL logged, step by step; the last step's rewards
    re-scored; how far the weights moved."""
    mean, std = (f"rewards/{run.reward.__name__}/{stat}" for stat in ("mean", "std"))
    logged = {e["step"]: e for e in run.trainer.state.log_history if mean in e}
    steps = [
        {
            **s,
            "server_mean": s["reward_sum"] / s["rewards"] if s["rewards"] else math.nan,
            "trl_mean": logged[s["step"]][mean],
            "trl_std": logged[s["step"]][std],
            "loss": logged[s["step"]]["loss"],
        }
        for s in run.served.steps
    ]
    total = {k: sum(s[k] for s in run.served.steps) for k in ("requests", "rewards", "reward_sum")}
    logs = run.trainer._logs  # the last generation batch, as TRL's completions table holds it
    prompts = [as_text(p) for p in logs["prompt"]]
    completions = [as_text(c) for c in logs["completion"]]
    trl_rewards = list(logs["rewards"][run.reward.__name__])
    users = [run.user_of[p] for p in prompts]
    rescored = run.reward(prompts, completions, user_id=users)  # after the ledger's last read
    moved = {
        name: float((p.detach() - run.before[name]).abs().max())
        for name, p in run.trainer.model.named_parameters()
    }
    return {
        "method": config.method,
        "users": sorted(set(run.user_of.values())),
        "prompts": len(run.user_of),
        "num_generations": config.num_generations,
        "completions_per_step": run.batch,
        "steps": steps,
        "server_total": total,
        "trl_log_history": run.trainer.state.log_history,
        "last_step": [
            {"user_id": u, "completion": c[:60], "trl_reward": r, "rescored": again}
            for u, c, r, again in zip(users, completions, trl_rewards, rescored, strict=True)
        ],
        "weights": {
            "tensors": len(moved),
            "changed": sum(d > 0 for d in moved.values()),
            "max_abs_change": max(moved.values()),
        },
        "checks": {
            "server_rewards_equal_trl_consumed": total["rewards"] == config.steps * run.batch,
            "each_step_server_count_equals_batch": all(s["rewards"] == run.batch for s in steps),
            "each_step_trl_mean_equals_server_mean": all(
                close(s["trl_mean"], s["server_mean"]) for s in steps
            ),
            "last_step_rescored_equals_trl_logged": all(map(close, rescored, trl_rewards)),
            "policy_weights_changed": any(d > 0 for d in moved.values()),
        },
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"GRPO, method {report['method']}: users {', '.join(report['users'])}, "
        f"{report['prompts']} prompts x G={report['num_generations']} "
        f"= {report['completions_per_step']} completions a step",
        "| step | rewards served | server mean | TRL logged mean | TRL std | loss |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['step']} | {s['rewards']} | {s['server_mean']:.6f} | {s['trl_mean']:.6f} "
        f"| {s['trl_std']:.4f} | {s['loss']:.2e} |"
        for s in report["steps"]
    ]
    total, weights = report["server_total"], report["weights"]
    lines.append(
        f"server: {total['requests']} /get_reward requests, {total['rewards']} rewards "
        f"(sum {total['reward_sum']:.6f}); TRL consumed "
        f"{len(report['steps']) * report['completions_per_step']}"
    )
    lines.append("last step, TRL's logged rewards against the server re-scoring the same rows:")
    lines += [
        f"  {r['user_id']}: {r['trl_reward']:+.6f} vs {r['rescored']:+.6f}  {r['completion']!r}"
        for r in report["last_step"]
    ]
    lines.append(
        f"policy: {weights['changed']} of {weights['tensors']} tensors changed, "
        f"max |delta| {weights['max_abs_change']:.2e}"
    )
    lines += [f"check {name}: {'ok' if ok else 'FAILED'}" for name, ok in report["checks"].items()]
    return lines


def main(argv: list[str] | None = None) -> None:
    import ray
    from ray import serve

    config = parse_config(TRLGRPOConfig, argv, description=__doc__)
    try:
        base_url = start(config)
        with tempfile.TemporaryDirectory() as work_dir:
            report = summarize(grpo_run(config, base_url, Path(work_dir)), config)
    finally:
        serve.shutdown()
        ray.shutdown()
    lines = report_lines(report)
    print("\n".join(lines))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    config.out.with_suffix(".log").write_text("\n".join(lines) + "\n")
    if not all(report["checks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
