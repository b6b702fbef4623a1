"""The rubric judge as the chain teacher on CPU, behind the same `generate` as an LLM.

An LLM judge learns to write chains by SFT on a teacher's chains (P-GenRM's PSI stage). On a
GPU cluster the teacher is an LLM (`kind: vllm` or `openai`); on CPU it is the project's
strongest CPU judge, the rubric judge (`pgenrm/rubric.py`), fitted on the seen users'
training comparisons. It judges from the prompt alone, as the student will (`read_request`):
it embeds the texts the prompt shows (clipped as shown), adapts the user's rubric on the
history the prompt shows, and writes one brief chain (`RubricJudge.chain(brief=True)`) per
bootstrap draw of that rubric, so its n samples differ where the history leaves room.
Temperature 0 writes the point-estimate chain n times.

The fitted judge is an artefact (`save_teacher`/`load_teacher`): `jobs.build_chains` fits
and saves it on first use, and every teacher actor loads the same file.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from personal_rm.artefacts import Format, load, save
from personal_rm.backends import SamplingConfig
from personal_rm.embed import TextEncoder, pair_text
from personal_rm.features import PairSet
from personal_rm.pgenrm.prompt import Message, read_request, render_chain
from personal_rm.pgenrm.rubric import RubricJudge

FORMAT = Format("personal-rm/rubric-teacher", 1)
NOT_A_JUDGE_PROMPT = "I can only judge prompts in the judge's format."


def save_teacher(judge: RubricJudge, stem: str | Path) -> None:
    save(stem, judge.to_artefact(), FORMAT)


def load_teacher(stem: str | Path, encoder: TextEncoder) -> RubricJudge:
    return load(stem, FORMAT, lambda artefact: RubricJudge.from_artefact(artefact, encoder))


class RubricTeacher:
    """`GenerationBackend` writing the rubric judge's brief chains for judge prompts."""

    def __init__(self, judge: RubricJudge, encoder: TextEncoder, rubric_size: int = 3) -> None:
        config = judge.config.model_copy(update={"rubric_size": rubric_size})
        self.judge, self.encoder = judge, encoder
        self.judge.config = config

    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        return [self._chains(messages, n, sampling) for messages in prompts]

    def _chains(self, messages: Sequence[Message], n: int, sampling: SamplingConfig) -> list[str]:
        request = read_request(messages)
        if request is None:  # not a judge prompt: say so, as a model would, unparseably
            return [NOT_A_JUDGE_PROMPT] * n
        key = f"prompt-{zlib.crc32(messages[-1]['content'].encode()):08x}"  # seeds the draws
        h = len(request.history)
        texts = [pair_text(p, c) for p, c, _ in request.history]
        texts += [pair_text(p, r) for p, _, r in request.history]
        texts += [pair_text(request.prompt, r) for r in request.responses]
        vectors = self.encoder.encode(texts)  # one call: one cache look-up per prompt
        ids = np.full(h, key, dtype=object)
        history = PairSet(ids, vectors[:h], vectors[h : 2 * h])
        responses = vectors[2 * h :]
        if sampling.temperature > 0:
            draws = self.judge.sample_rubrics([history], n, seed=sampling.seed or 0)[0]
        else:
            draws = np.repeat(self.judge.rubrics(history, [key])[key][None], n, axis=0)
        return [render_chain(self.judge.chain(w, responses, brief=True)) for w in draws]
