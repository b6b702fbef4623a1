"""What the P-GenRM judge reads and writes: the prompt, the chain's text form, the shuffle.

The judge sees the user's history as (prompt, chosen, rejected) examples, then the new prompt
and its responses labelled A, B, ... in a shuffled order (judges favour a position; shuffling
turns that bias into noise instead of a systematic error). It writes free-text analysis, then
one JSON object between `CHAIN_START` and `CHAIN_END`. `render_chain` writes that text for a
chain (SFT targets); `chains_parser.parse_chain` reads it back; `unshuffle` maps a chain's
response indices from the shown order back to the request's order.

The prompt's sections are delimited by tags, so `read_request` can recover the request from
the messages: the CPU stand-in teacher (`backends.heuristic`) judges from the prompt alone,
behind the same interface as an LLM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from personal_rm.pgenrm.chain import EvaluationChain

CHAIN_START = "<chain>"
CHAIN_END = "</chain>"
LABELS = "ABCDEFGH"
TOTAL_KEY = "total"  # the stated Σ weight · score of a response, beside its criterion scores

Message = dict[str, str]

SYSTEM_PROMPT = f"""\
You are a personalized judge. From the user's past choices, infer how this user judges \
answers: the style they prefer, the content and structure they want, the values underneath. \
Then write a rubric of a few criteria that fit the new request, with weights that sum to 1, \
score every response on every criterion from 1 to 10, and name the response this user prefers.

Write your analysis first, then one JSON object between {CHAIN_START} and {CHAIN_END}:
{CHAIN_START}
{{"persona": {{"style": "...", "content_and_structure": "...", "core_values": "..."}}, \
"rubric": [{{"name": "...", "description": "...", "weight": 0.6}}, \
{{"name": "...", "description": "...", "weight": 0.4}}], \
"scores": {{"A": {{"<criterion>": 7, "<criterion>": 4, "{TOTAL_KEY}": 5.8}}, "B": {{...}}}}, \
"verdict": "A"}}
{CHAIN_END}
"{TOTAL_KEY}" is the sum of weight times score; the verdict is the response with the highest \
total."""


@dataclass(frozen=True)
class JudgeRequest:
    """One judging task: the user's history and the responses in the order shown."""

    history: tuple[tuple[str, str, str], ...]  # (prompt, chosen, rejected), as the user chose
    prompt: str
    responses: tuple[str, ...]


def shuffle_order(n: int, rng: np.random.Generator) -> list[int]:
    """`order[j]` is the request index of the response shown at position j."""
    return [int(i) for i in rng.permutation(n)]


def unshuffle(chain: EvaluationChain, order: Sequence[int]) -> EvaluationChain:
    """Map a chain written about the shown order back to the request's order."""
    scores = [s.model_copy(update={"response": order[s.response]}) for s in chain.scores]
    return chain.model_copy(update={"scores": scores, "verdict": order[chain.verdict]})


def _clip(text: str, max_chars: int | None) -> str:
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars] + "…"


def render_messages(request: JudgeRequest, max_text_chars: int | None = None) -> list[Message]:
    """Chat messages for the judge; every text is cut to `max_text_chars` (context budget)."""

    def tag(name: str, text: str, attrs: str = "") -> str:
        return f"<{name}{attrs}>\n{_clip(text, max_text_chars)}\n</{name}>"

    examples = [
        f"<example>\n{tag('prompt', p)}\n{tag('chosen', c)}\n{tag('rejected', r)}\n</example>"
        for p, c, r in request.history
    ]
    history = "\n".join(examples) if examples else "This user has no recorded choices yet."
    responses = [
        tag("response", text, f' label="{LABELS[i]}"') for i, text in enumerate(request.responses)
    ]
    user = (
        f"The user's past choices:\n<history>\n{history}\n</history>\n\n"
        f"The new request:\n<request>\n{tag('prompt', request.prompt)}\n"
        + "\n".join(responses)
        + "\n</request>\n\nJudge the responses for this user."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_SECTION = re.compile(r"<(history|request)>\n(.*?)\n</\1>", re.S)
_EXAMPLE = re.compile(
    r"<example>\n<prompt>\n(.*?)\n</prompt>\n<chosen>\n(.*?)\n</chosen>\n"
    r"<rejected>\n(.*?)\n</rejected>\n</example>",
    re.S,
)
_PROMPT = re.compile(r"^<prompt>\n(.*?)\n</prompt>", re.S)
_RESPONSE = re.compile(r'<response label="[A-H]">\n(.*?)\n</response>', re.S)


def read_request(messages: Sequence[Message]) -> JudgeRequest | None:
    """Invert `render_messages` (texts come back clipped); None if the layout is not ours."""
    sections = dict(_SECTION.findall(messages[-1]["content"]))
    if set(sections) != {"history", "request"}:
        return None
    prompt = _PROMPT.match(sections["request"])
    responses = _RESPONSE.findall(sections["request"])
    if prompt is None or len(responses) < 2:
        return None
    history = tuple(_EXAMPLE.findall(sections["history"]))
    return JudgeRequest(history, prompt.group(1), tuple(responses))


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 2)


def chain_json(chain: EvaluationChain) -> dict:
    """The model-facing JSON of a chain: responses keyed by their shown labels."""
    scores = {}
    for s in sorted(chain.scores, key=lambda s: s.response):
        entry = {name: _number(v) for name, v in s.scores.items()}
        if s.stated_total is not None:
            entry[TOTAL_KEY] = _number(s.stated_total)
        scores[LABELS[s.response]] = entry
    return {
        "persona": chain.persona.model_dump(),
        "rubric": [c.model_dump() for c in chain.rubric],
        "scores": scores,
        "verdict": LABELS[chain.verdict],
    }


def render_chain(chain: EvaluationChain) -> str:
    """The text a judge should write for `chain` (indices in the shown order): SFT targets."""
    body = json.dumps(chain_json(chain), ensure_ascii=False)
    return f"{chain.analysis}\n{CHAIN_START}\n{body}\n{CHAIN_END}"
