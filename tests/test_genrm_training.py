"""GenRM chain data and training on real local Ray: the toy task the tiny model must learn.

Toy users prefer the longer (or, half of them, the shorter) answer; the heuristic teacher's
accepted chains are the SFT data. A random tiny Llama parses ~0% of its generations; after
SFT on Ray Train (2 DDP workers, HF checkpoints) it must write parseable chains, which is
only possible if the loss is on the chain tokens and the data path is right.
"""

import json

import numpy as np
import pytest
import torch

from actors.chain_builder import build_chains
from actors.genrm_trainer import GenRMRayConfig, chain_dataset, fit_genrm
from personal_rm.backends import HeuristicBackendConfig, SamplingConfig
from personal_rm.backends.transformers_backend import TransformersBackend
from personal_rm.pgenrm.chain_data import open_for_append, read_chain_rows, sft_rows
from personal_rm.pgenrm.llm_judge import judge_report, judge_tasks, make_tasks
from personal_rm.pgenrm.prompt import PromptBudget, render_messages
from personal_rm.pgenrm.training import (
    IGNORE,
    GRPOConfig,
    SFTConfig,
    completion_logprobs,
    encode_sft,
    group_advantages,
    grpo_loss,
)

from genrm_fixtures import tiny_judge, toy_comparisons

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=320)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_judge(tmp_path_factory.getbasetemp() / "tiny-judge")


def parse_failure_rate(model_path) -> tuple[float, dict]:
    held_out = toy_comparisons(4, 4, seed=99)
    tasks = make_tasks(held_out, held_out, 2, seed=1)
    backend = TransformersBackend.load(str(model_path))
    report = judge_report(judge_tasks(backend, tasks, n=1, sampling=GREEDY), n_boot=10)
    return report["parse_failure_rate"], report


def test_sft_masks_the_prompt(model_dir):
    backend = TransformersBackend.load(str(model_dir))
    tokenizer = backend.tokenizer
    task = make_tasks(toy_comparisons(1, 3), toy_comparisons(1, 3), 2)[0]
    prompt = render_messages(task.request())
    encoded = encode_sft(tokenizer, prompt, "Longer wins.\n<chain>\n{}\n</chain>", 4096)
    labels = np.array(encoded["labels"])
    n_prompt = int((labels == IGNORE).sum())
    assert labels[:n_prompt].tolist() == [IGNORE] * n_prompt  # prompt first, all masked
    target = tokenizer.decode(encoded["input_ids"][n_prompt:])
    assert target == "Longer wins.\n<chain>\n{}\n</chain><|end|>"
    assert encode_sft(tokenizer, prompt, "x", max_length=n_prompt) is None


def test_group_advantages_and_kl():
    rewards = torch.tensor([[1.2, 0.2, 0.2, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(adv[0].std(unbiased=False), torch.tensor(1.0), atol=1e-3)
    assert torch.equal(adv[1], torch.zeros(4))  # nothing to learn from a uniform group
    logps = torch.log(torch.tensor([[0.5, 0.25]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    _, kl = grpo_loss(logps, logps, torch.tensor([1.0]), mask, kl_coef=0.1)
    assert float(kl) == 0.0
    _, kl = grpo_loss(logps, logps - 1.0, torch.tensor([1.0]), mask, kl_coef=0.1)
    assert float(kl) == pytest.approx(np.exp(-1) + 1 - 1)


def test_completion_logprobs_are_the_full_models_on_completion_tokens(model_dir):
    """Logits kept only where a completion token is predicted give what the model's full
    forward gives there (prompts and completions of different lengths, right-padded)."""
    model = TransformersBackend.load(str(model_dir)).model
    prompts, completions = [[5, 6, 7, 8, 9], [10, 11]], [[12, 13], [14, 15, 16, 17]]
    logps, mask = completion_logprobs(model, prompts, completions, pad_id=0)
    assert mask.sum(1).tolist() == [2, 4]
    for prompt, completion, row, keep in zip(prompts, completions, logps, mask, strict=True):
        ids = torch.tensor([prompt + completion])
        full = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = full[len(prompt) - 1 :].gather(1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(row[keep], expected, atol=1e-5, rtol=1e-5)


def test_open_for_append_drops_a_partial_last_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "tru')
    with open_for_append(path) as sink:
        sink.write('{"id": "c"}\n')
    assert [r["id"] for r in read_chain_rows(path)] == ["a", "c"]


@pytest.mark.ray
def test_build_chains_on_actors_then_resume(ray_session, tmp_path):
    data = toy_comparisons(6, 5, seed=3)
    tasks = make_tasks(data, data, 2, seed=0)
    out = tmp_path / "chains.jsonl"
    options = {
        "tries": 3,
        "sampling": SamplingConfig(temperature=1.0),
        "budget": PromptBudget(max_text_chars=200),
        "provenance": {"teacher": "heuristic"},
        "actor_options": {"num_cpus": 0.5},
        "batch_size": 4,
    }
    first = build_chains(tasks[:20], out, HeuristicBackendConfig(), **options)
    assert first == {"skipped_done": 0, "written": 20, "accepted": first["accepted"]}
    second = build_chains(tasks, out, HeuristicBackendConfig(), **options)
    assert second["skipped_done"] == 20 and second["written"] == 10
    rows = list(read_chain_rows(out))
    assert sorted(r["id"] for r in rows) == sorted(t.id for t in tasks)  # each exactly once
    accepted = sft_rows(out)
    assert len(accepted) >= 0.9 * len(rows)  # the stand-in teacher reads the history right
    row = accepted[0]
    assert row["prompt"][0]["role"] == "system" and row["completion"][0]["role"] == "assistant"
    assert row["chain"]["verdict"] == 0  # stored in (chosen, rejected) order
    assert row["provenance"]["tries"] == 3 and row["provenance"]["teacher"] == "heuristic"
    assert json.dumps(row)  # plain JSON all the way down


@pytest.mark.ray
def test_sft_then_rl_on_ray_train(ray_session, model_dir, tmp_path):
    data = toy_comparisons(16, 8, seed=0)
    tasks = make_tasks(data, data, 2, seed=0)
    chains = tmp_path / "chains.jsonl"
    build_chains(
        tasks,
        chains,
        HeuristicBackendConfig(),
        tries=2,
        sampling=SamplingConfig(temperature=0.5),
        budget=PromptBudget(),
        provenance={},
        actor_options={"num_cpus": 0.5},
        batch_size=64,
    )
    rows = chain_dataset(chains, "sft")  # read by Ray Data, as jobs.train_genrm does
    assert rows.count() == len(sft_rows(chains))
    before, _ = parse_failure_rate(model_dir)
    assert before >= 0.9

    distributed = GenRMRayConfig(
        num_workers=2, storage_path=tmp_path / "ray", name="toy", gradient_checkpointing=True
    )
    sft = SFTConfig(epochs=7, batch_size=2, lr=5e-3)  # few epochs: each starts a Ray Data pass
    result = fit_genrm("sft", rows, model_dir, sft, distributed, tmp_path / "sft")
    losses = [epoch["loss"] for epoch in result.return_value]
    assert losses[-1] < 0.25 * losses[0]
    after, report = parse_failure_rate(tmp_path / "sft")  # the HF folder loads as is
    assert after <= 0.25, report

    longer = sft.model_copy(update={"epochs": 8})
    resumed = fit_genrm("sft", rows, model_dir, longer, distributed, tmp_path / "sft")
    assert [e["start_epoch"] for e in resumed.return_value] == [0] * 7 + [7]

    rl = GRPOConfig(epochs=1, prompts_per_step=2, group_size=4, lr=1e-4, max_new_tokens=320)
    rl_rows = list(read_chain_rows(chains))[:8]
    result = fit_genrm("rl", rl_rows, tmp_path / "sft", rl, distributed, tmp_path / "rl")
    metrics = result.metrics
    assert metrics["parse_rate"] >= 0.25  # sampled at temperature 1; random weights: ~0
    assert metrics["kl"] > 0  # the policy moved away from the SFT reference
    sft_weights = TransformersBackend.load(str(tmp_path / "sft")).model.state_dict()
    rl_weights = TransformersBackend.load(str(tmp_path / "rl")).model.state_dict()
    assert any(not torch.equal(sft_weights[k], rl_weights[k]) for k in sft_weights)
