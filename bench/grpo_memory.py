"""Peak memory of one GRPO policy update on a judge's long prompts: the log-probs the way they
were first computed (full-vocabulary logits at every position) against the way
`training.completion_logprobs` computes them (the output layer on completion positions only),
with and without gradient checkpointing (`--train.gradient_checkpointing`).

    python -m bench.grpo_memory --model smollm2-135m --group 8 --prompt_tokens 600

Each variant runs in its own process (peak RSS is per process): load the policy, one forward
over `group` rows of `prompt_tokens` + `completion_tokens` random tokens, the log-probs of the
completion tokens, one backward. Prints a table, writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full_logits", "completion_only", "completion_only+checkpointing")


def full_logits_logprobs(model, prompts, completions):
    """The baseline: log_softmax over the whole vocabulary at every position, then gather."""
    import torch

    from personal_rm.pgenrm.training import IGNORE, collate

    rows = [
        {"input_ids": p + c, "labels": [IGNORE] * len(p) + c}
        for p, c in zip(prompts, completions, strict=True)
    ]
    batch = collate(rows, pad_id=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1), labels != IGNORE


def one_update(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from personal_rm.models import resolve_model
    from personal_rm.pgenrm.training import completion_logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model)).train()
    if args.variant.endswith("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (args.group, args.prompt_tokens)).tolist()
    completions = torch.randint(0, vocab, (args.group, args.completion_tokens)).tolist()
    started = time.perf_counter()
    if args.variant == "full_logits":
        logps, mask = full_logits_logprobs(model, prompts, completions)
    else:
        logps, mask = completion_logprobs(model, prompts, completions, pad_id=0)
    (logps * mask).sum().backward()
    return {
        "variant": args.variant,
        "loaded_gib": round(loaded, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--group", type=int, default=8, help="Rows: prompts x group size.")
    parser.add_argument("--prompt_tokens", type=int, default=600)
    parser.add_argument("--completion_tokens", type=int, default=256)
    parser.add_argument("--variant", choices=VARIANTS, help="Run one variant (in this process).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/grpo_memory.json"))
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_update(args)))
        return
    rows = []
    for variant in VARIANTS:
        argv = [sys.executable, "-m", "bench.grpo_memory", *sys.argv[1:], "--variant", variant]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]
    table = ["| variant | peak RSS (GiB) | vs full logits | seconds |", "|---|---|---|---|"]
    table += [
        f"| {r['variant']} | {r['peak_rss_gib']:.1f} | "
        f"{r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x | {r['seconds']:.0f} |"
        for r in rows
    ]
    print("\n".join(table))
    result = {
        "command": "python -m bench.grpo_memory " + " ".join(sys.argv[1:]),
        "rows": rows,
        "table": "\n".join(table),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
