"""Every backend on the same tiny random Llama: transformers in-process, OpenAI-compatible
over real HTTP on 127.0.0.1, and vLLM (vllm-cpu) when it is installed."""

import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from personal_rm.backends import (
    OpenAIBackendConfig,
    SamplingConfig,
    VLLMBackendConfig,
    build_backend,
    chat_text,
)
from personal_rm.backends.openai_backend import OpenAIBackend
from personal_rm.backends.openai_server import make_app
from personal_rm.backends.transformers_backend import TransformersBackend
from personal_rm.pgenrm.llm_judge import make_tasks
from personal_rm.pgenrm.prompt import render_messages

from genrm_fixtures import tiny_judge, toy_comparisons

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)
SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_judge(tmp_path_factory.getbasetemp() / "tiny-judge")


@pytest.fixture(scope="module")
def prompts():
    data = toy_comparisons(2, 3)
    return [render_messages(t.request()) for t in make_tasks(data, data, 1)[:3]]


@pytest.fixture(scope="module")
def local(model_dir):
    return TransformersBackend.load(str(model_dir), batch_size=2)


def check_shape_and_sampling(backend, prompts):
    samples = backend.generate(prompts, 3, SAMPLED)
    assert len(samples) == len(prompts) and all(len(s) == 3 for s in samples)
    assert all(isinstance(t, str) and t for s in samples for t in s)
    assert len({t for s in samples for t in s}) > len(prompts)  # samples differ
    greedy = backend.generate(prompts, 2, GREEDY)
    assert all(s[0] == s[1] for s in greedy)  # temperature 0 is deterministic
    return greedy


def test_transformers_backend_batches_and_samples(local, prompts):
    greedy = check_shape_and_sampling(local, prompts)
    # Batching (left padding) must not change a prompt's continuation.
    alone = [local.generate([p], 1, GREEDY)[0][0] for p in prompts]
    assert alone == [s[0] for s in greedy]
    assert local.generate(prompts, 2, SAMPLED) == local.generate(prompts, 2, SAMPLED)


def test_shared_prefill_is_the_cache_generate_would_build(local, prompts):
    """A prompt's KV cache computed once and repeated k times = the repeated prompts' cache;
    and greedy continuations equal plain `generate`'s (two prompt lengths: left padding)."""
    tokenizer = local.tokenizer
    batch = tokenizer(
        [chat_text(tokenizer, p) for p in prompts[:2]],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        shared = local.prefill(ids, mask, 3, 4)
        repeated = local.prefill(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), 1, 4)
    for a, b in zip(shared.layers, repeated.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
    plain = local.model.generate(**batch, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    texts = tokenizer.batch_decode(plain[:, ids.shape[1] :], skip_special_tokens=True)
    assert [s[0] for s in local.generate(prompts[:2], 1, GREEDY)] == texts


@pytest.fixture(scope="module")
def server(local):
    """Our OpenAI-compatible app on a free loopback port, served by uvicorn in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(local, "tiny"), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_openai_backend_against_a_real_local_server(server, local, prompts):
    backend = build_backend(OpenAIBackendConfig(model="tiny", base_url=server, concurrency=2))
    greedy = check_shape_and_sampling(backend, prompts)
    # The server really runs the model: same tokens as calling it in-process.
    assert [s[0] for s in greedy] == [s[0] for s in local.generate(prompts, 1, GREEDY)]
    assert httpx.get(f"{server}/models").json()["data"][0]["id"] == "tiny"


def test_openai_backend_retries_then_raises():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(
        f"http://127.0.0.1:{port}/v1", "tiny", timeout_s=1, max_retries=2, backoff_s=0.05
    )
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="3 attempts failed"):
        backend.generate([[{"role": "user", "content": "hi"}]], 1, GREEDY)
    assert 0.15 <= time.monotonic() - start < 10  # backed off 0.05 + 0.1 s, then gave up


def test_vllm_backend_without_vllm_says_how_to_install(model_dir):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="personal-rm\\[gpu\\]"):
            build_backend(VLLMBackendConfig(model=str(model_dir)))
    else:
        pytest.skip("vllm is installed: the real backend is tested below")


@pytest.fixture(scope="module", params=[False, True], ids=["engine-process", "in-process"])
def vllm_backend(model_dir, request):
    """A vLLM engine per mode (start-up is ~30-90 s on 2 CPU cores): in its own engine-core
    process (serving), and in this process (a trainer's rollouts)."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    backend = build_backend(
        VLLMBackendConfig(
            model=str(model_dir),
            dtype="float32",
            max_model_len=2048,
            enforce_eager=True,
            in_process=request.param,
        )
    )
    yield backend
    backend.close()


def test_vllm_backend_samples_n_per_prompt(vllm_backend, local, prompts):
    greedy = check_shape_and_sampling(vllm_backend, prompts)
    # Same weights (float32), same greedy tokens as transformers.
    assert [s[0] for s in greedy] == [s[0] for s in local.generate(prompts, 1, GREEDY)]


def test_vllm_rollouts_follow_the_trainers_weights(vllm_backend, model_dir, prompts):
    """GRPO's vLLM rollouts (`VLLMRollouts`, what `rl_loop` samples through with `rollout:
    vllm`) copy the live policy's weights in before sampling: after a policy step, vLLM's
    greedy chains are the updated policy's own (transformers, same weights)."""
    from actors.genrm_trainer import VLLMRollouts

    if not vllm_backend.in_process:
        with pytest.raises(RuntimeError, match="in_process"):
            vllm_backend.load_weights({})
        return
    before = vllm_backend.generate(prompts, 1, SAMPLED)
    policy = TransformersBackend.load(str(model_dir), batch_size=2)
    rollouts = VLLMRollouts(policy.model, vllm_backend)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a policy step away from the starting weights
        for weight in policy.model.parameters():
            weight.add_(0.5 * weight.std() * torch.randn(weight.shape, generator=generator))
    assert rollouts.generate(prompts, 1, GREEDY) == policy.generate(prompts, 1, GREEDY)
    assert vllm_backend.generate(prompts, 1, SAMPLED) != before  # same seed, new weights


def test_vllm_seeded_samples_of_a_batch_longer_than_one_prefill_step(vllm_backend):
    """vllm-cpu 0.32 died when a seeded request's prefill was split across engine steps
    ("CPU Generator does not use offset"): 32 distinct 150-word prompts overflow one step."""
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "tree", "blue", "run", "sky", "red", "sea"]
    texts = [" ".join(f"{w}{rng.integers(99)}" for w in rng.choice(words, 150)) for _ in range(32)]
    seeded = SamplingConfig(temperature=0.7, max_new_tokens=4, seed=0)
    prompts = [[{"role": "user", "content": text}] for text in texts]
    assert len(vllm_backend.generate(prompts, 1, seeded)) == 32
