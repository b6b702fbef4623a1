"""A minimal OpenAI-compatible server around any backend: `/v1/chat/completions`, `/v1/models`.

    python -m personal_rm.backends.openai_server --model results/genrm/rl --port 8001
    python -m personal_rm.backends.openai_server --model smollm2-135m --port 8001

Serves a local transformers model to the `openai` backend (tests and the CPU pipeline use it
on 127.0.0.1); on GPUs, serve with `vllm serve` instead. Generation is serialised by a lock:
one model, one request at a time, the requested n samples in one generate call.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from personal_rm.backends import GenerationBackend, SamplingConfig


class ChatRequest(BaseModel):
    model: str = ""
    messages: list[dict[str, str]]
    n: int = Field(1, ge=1, le=64)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None


def make_app(backend: GenerationBackend, model_name: str) -> FastAPI:
    app = FastAPI(title="personal-rm OpenAI-compatible generation")
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> dict:
        sampling = SamplingConfig(
            max_new_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        with lock:
            texts = backend.generate([request.messages], request.n, sampling)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i, text in enumerate(texts)
            ],
        }

    return app


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ..., description="Model folder (or a named one: smollm2-135m) to serve with transformers."
    )
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, description="Port to listen on.")
    device: str = Field("cpu", description="Torch device.")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from personal_rm.backends.transformers_backend import TransformersBackend
    from personal_rm.config import parse_config

    config = parse_config(ServerConfig, argv, description=__doc__)
    backend = TransformersBackend.load(config.model, config.device)
    uvicorn.run(make_app(backend, config.model), host=config.host, port=config.port)


if __name__ == "__main__":
    main(sys.argv[1:])
