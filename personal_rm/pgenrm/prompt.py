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

Sized for a small judge (SmolLM2-135M learns and samples affordably only from short prompts):
every text is clipped to `max_text_chars`, with its full length kept in the clip mark (a
user's taste for long answers survives the cut); the history is the latest examples that fit
in `history_tokens` tokens; the chain is compact JSON. The same chain and parser serve an 8B
judge, with a larger budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from personal_rm.pgenrm.chain import EvaluationChain

CHAIN_START = "<chain>"
CHAIN_END = "</chain>"
LABELS = "ABCDEFGH"
TOTAL_KEY = "total"  # the stated Σ weight · score of a response, beside its criterion scores

Message = dict[str, str]

SYSTEM_PROMPT = f"""\
Judge the responses for this user. From their past choices infer a persona (style, content \
and structure, core values), write a rubric of criteria with weights summing to 1, score each \
response 1-10 per criterion, and give the verdict. Write a short analysis, then:
{CHAIN_START}
{{"persona":{{"style":"...","content_and_structure":"...","core_values":"..."}},\
"rubric":[{{"name":"detail","weight":0.6}},{{"name":"tone","weight":0.4}}],\
"scores":{{"A":{{"detail":7,"tone":4,"{TOTAL_KEY}":5.8}},"B":{{...}}}},"verdict":"A"}}
{CHAIN_END}
{TOTAL_KEY} = sum of weight * score; the verdict has the highest {TOTAL_KEY}."""

TokenCounter = Callable[[str], int]


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


_CLIP_MARK = re.compile(r"…\[(\d+) chars\]$")


def _clip(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…[{len(text)} chars]"


def shown_length(text: str) -> int:
    """The length of the text before `_clip` cut it: what a judge reads off the clip mark."""
    mark = _CLIP_MARK.search(text)
    return int(mark.group(1)) if mark else len(text)


def _latest_within(examples: list[str], budget: int, count_tokens: TokenCounter) -> list[str]:
    """The longest run of latest examples whose tokens fit in `budget`, oldest first."""
    kept, used = [], 0
    for example in reversed(examples):
        used += count_tokens(example + "\n")
        if used > budget:
            break
        kept.append(example)
    return kept[::-1]


def render_messages(
    request: JudgeRequest,
    max_text_chars: int | None = None,
    history_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
    history_text_chars: int | None = None,
) -> list[Message]:
    """Chat messages for the judge: the request's texts cut to `max_text_chars`, the
    history's to `history_text_chars` (default: the same), and the history to the latest
    examples within `history_tokens` (counted by `count_tokens`)."""

    def tag(name: str, text: str, attrs: str = "", cut: int | None = max_text_chars) -> str:
        return f"<{name}{attrs}>\n{_clip(text, cut)}\n</{name}>"

    cut = max_text_chars if history_text_chars is None else history_text_chars
    examples = [
        f"<example>\n{tag('prompt', p, cut=cut)}\n{tag('chosen', c, cut=cut)}\n"
        f"{tag('rejected', r, cut=cut)}\n</example>"
        for p, c, r in request.history
    ]
    if history_tokens is not None:
        if count_tokens is None:
            raise ValueError("a history budget in tokens needs count_tokens")
        examples = _latest_within(examples, history_tokens, count_tokens)
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


@lru_cache(maxsize=4)
def token_counter(tokenizer: str) -> TokenCounter:
    """Tokens of a text under a model's tokenizer (a folder or a named model), loaded once."""
    from transformers import AutoTokenizer

    from personal_rm.models import resolve_model

    loaded = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    return lambda text: len(loaded(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class PromptBudget:
    """How much of a request the judge reads (see the module docstring). `tokenizer` names
    the judge's model: the history budget is counted in its tokens."""

    max_text_chars: int | None = None
    history_tokens: int | None = None
    tokenizer: str | None = None
    history_text_chars: int | None = None  # None: as max_text_chars

    def __post_init__(self) -> None:
        if self.history_tokens is not None and self.tokenizer is None:
            raise ValueError("history_tokens is counted in a model's tokens: set tokenizer")

    def render(self, request: JudgeRequest) -> list[Message]:
        count = token_counter(self.tokenizer) if self.tokenizer is not None else None
        return render_messages(
            request, self.max_text_chars, self.history_tokens, count, self.history_text_chars
        )


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
    """The text a judge should write for `chain` (indices in the shown order): SFT targets.
    Compact JSON (no spaces, no empty descriptions): fewer tokens to learn and to sample."""
    body = chain_json(chain)
    body["rubric"] = [{k: v for k, v in c.items() if v != ""} for c in body["rubric"]]
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"{chain.analysis}\n{CHAIN_START}\n{text}\n{CHAIN_END}"
