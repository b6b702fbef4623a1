"""The main command's closing demo: which users and requests show personalization, by rule.

Nothing here is chosen by hand. Two seen users with opposite tastes: the pair whose fitted
preference vectors, centred on the mean seen user, have the most negative dot product (most
opposite, and far from the mean). Their candidate set: responses of one prompt of the data
whose global reward lies closest together (where the global reward barely prefers any, so
taste decides), the prompt on which the two users' served winners differ by the widest
margin. A cold-start user: an unseen user's own comparisons, replayed under a fresh id; the
users with most choices against the global reward go first, the feedback is their earlier
comparisons that go against it, the target one of their later ones that does, and the shown
target is the one the served ranking flips on soonest. The server computes every score;
this module only applies the rules and draws the tables.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from personal_rm.data.comparison import Comparison

PAIR_RULE = (
    "two seen users whose fitted preference vectors (rubric criterion weights, centred on the "
    "mean seen user) have the most negative dot product; candidates: the {size} responses of one "
    "prompt closest in global BT reward, the prompt where their served winners differ most"
)
COLD_RULE = (
    "an unseen user replayed under a fresh id (no history); users with most choices against "
    "the global BT reward first; feedback: their earlier comparisons that go against it, in "
    "recorded order; shown: the later such comparison whose served ranking flips soonest"
)


def most_opposite(weights: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """The pair of users whose centred preference vectors have the most negative dot product:
    pointing away from each other, each far from the mean user."""
    users = sorted(weights)
    matrix = np.stack([np.asarray(weights[u], np.float64) for u in users])
    centred = matrix - matrix.mean(0)
    dots = centred @ centred.T
    np.fill_diagonal(dots, np.inf)
    i, j = np.unravel_index(int(np.argmin(dots)), dots.shape)
    return users[min(i, j)], users[max(i, j)]


GlobalReward = Callable[[str, Sequence[str]], np.ndarray]  # (prompt, responses) -> rewards


def leanings(
    weights: Mapping[str, np.ndarray], criteria: Sequence[str], users: Sequence[str]
) -> tuple[str, ...]:
    """For each of `users`, the criterion they weigh most above the mean user's weight."""
    mean = np.mean([weights[u] for u in weights], axis=0)
    return tuple(criteria[int(np.argmax(weights[u] - mean))] for u in users)


def responses_by_prompt(comparisons: Sequence[Comparison]) -> dict[str, list[str]]:
    """Every distinct response of the data to each prompt, in order of first appearance."""
    found: dict[str, dict[str, None]] = defaultdict(dict)
    for c in comparisons:
        found[c.prompt].update({c.chosen: None, c.rejected: None})
    return {prompt: list(responses) for prompt, responses in found.items()}


def closest_in_quality(rewards: np.ndarray, size: int) -> list[int]:
    """The `size` responses whose global rewards lie closest together (smallest range): where
    the global reward barely prefers any, so a user's taste decides."""
    order = np.argsort(rewards, kind="stable")
    spans = rewards[order[size - 1 :]] - rewards[order[: len(order) - size + 1]]
    start = int(np.argmin(spans))
    return sorted(order[start : start + size].tolist())


def candidate_sets(
    comparisons: Sequence[Comparison], global_reward: GlobalReward, size: int
) -> dict[str, list[str]]:
    """Per prompt with at least `size` responses, its `size` closest in global reward."""
    sets = {}
    for prompt, responses in responses_by_prompt(comparisons).items():
        if len(responses) >= size:
            picked = closest_in_quality(global_reward(prompt, responses), size)
            sets[prompt] = [responses[i] for i in picked]
    return sets


def widest_disagreement(scores: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str | None:
    """The prompt whose two score vectors (user a's, user b's) have different winners, with
    the largest sum of each user's margin of their own winner over the other's; None: none."""
    best, best_gap = None, -np.inf
    for prompt, (a, b) in scores.items():
        win_a, win_b = int(np.argmax(a)), int(np.argmax(b))
        gap = (a[win_a] - a[win_b]) + (b[win_b] - b[win_a])
        if win_a != win_b and gap > best_gap:
            best, best_gap = prompt, gap
    return best


@dataclass(frozen=True)
class ColdCase:
    """An unseen user's comparisons, cut into the feedback to replay and the targets."""

    user: str
    feedback: list[Comparison]  # earlier comparisons against the global reward, in order
    targets: list[Comparison]  # later ones against it: each one a candidate to flip


def against_global(c: Comparison, global_reward: GlobalReward) -> bool:
    """Whether the global reward ranks the user's rejected response above their chosen one."""
    chosen, rejected = global_reward(c.prompt, [c.chosen, c.rejected])
    return rejected > chosen


def cold_cases(
    by_user: Mapping[str, Sequence[Comparison]], global_reward: GlobalReward, feedbacks: int
) -> list[ColdCase]:
    """Users by how many of their choices the global reward gets wrong (most first); each
    one's wrong-ranked comparisons split into up to `feedbacks` to replay and the rest."""
    cases = []
    for user, comparisons in by_user.items():
        against = [c for c in comparisons if against_global(c, global_reward)]
        if len(against) > 1:
            cut = min(feedbacks, len(against) - 1)
            cases.append(ColdCase(user, against[:cut], against[cut:]))
    return sorted(cases, key=lambda case: (-len(case.feedback) - len(case.targets), case.user))


def first_flip(prefers_chosen: Sequence[bool]) -> int | None:
    """Feedbacks until the served ranking agrees with the user, if it started against them."""
    if not prefers_chosen or prefers_chosen[0]:
        return None
    return next((h for h, agrees in enumerate(prefers_chosen) if agrees), None)


def snippet(text: str, width: int = 48) -> str:
    """One table cell of a response: its first line, cut to `width`, pipes escaped."""
    line = " ".join(text.split()).replace("|", "/")
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass(frozen=True)
class PairShown:
    """Two users' served scores of one candidate set."""

    users: tuple[str, str]
    history: tuple[int, int]  # comparisons each one's score read
    leans: tuple[str, str]  # the criterion each one weighs most above the mean user
    prompt: str
    responses: list[str]
    scores: tuple[list[float], list[float]]

    @property
    def winners(self) -> list[int]:
        return [int(np.argmax(s)) for s in self.scores]


@dataclass(frozen=True)
class ColdStep:
    """The served answer for the target after `feedbacks` comparisons were posted."""

    feedbacks: int
    prototype: int | None
    alpha: float
    chosen: float
    rejected: float

    @property
    def agrees(self) -> bool:
        return self.chosen > self.rejected


@dataclass(frozen=True)
class ColdShown:
    """A replayed unseen user's feedback, one comparison at a time, and the target's answers."""

    user: str  # the unseen user whose comparisons are replayed
    replayed_as: str  # the fresh id they are posted under
    against: int  # of their comparisons, how many the global reward ranks wrong
    total: int
    target: Comparison
    steps: list[ColdStep]

    @property
    def flip(self) -> int | None:
        return first_flip([s.agrees for s in self.steps])


def pair_table(shown: PairShown) -> str:
    """One row per response, one score column per user, each user's winner in bold."""
    header = [
        f"{u} ({h} comparisons; leans on {lean})"
        for u, h, lean in zip(shown.users, shown.history, shown.leans, strict=True)
    ]
    lines = ["| response | " + " | ".join(header) + " |", "|---|---|---|"]
    for r, text in enumerate(shown.responses):
        cells = [
            f"**{s[r]:.2f}**" if win == r else f"{s[r]:.2f}"
            for s, win in zip(shown.scores, shown.winners, strict=True)
        ]
        lines.append(f"| {snippet(text)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cold_table(shown: ColdShown) -> str:
    """One row per feedback posted: where the user is placed, and the target's two scores."""
    lines = [
        "| feedbacks | prototype | alpha | user's choice | the other | served winner |",
        "|---|---|---|---|---|---|",
    ]
    for s in shown.steps:
        winner = "user's choice" if s.agrees else "the other"
        lines.append(
            f"| {s.feedbacks} | {s.prototype} | {s.alpha:.2f} | {s.chosen:.2f} | "
            f"{s.rejected:.2f} | {winner} |"
        )
    return "\n".join(lines)


def render(method: str, size: int, pair: PairShown | None, cold: ColdShown | None) -> str:
    """What the demo prints: each rule, then what it found, ending on the cold-start table."""
    lines = [f"personalization, every score served by the app over HTTP (method {method}):"]
    lines.append(PAIR_RULE.format(size=size))
    if pair is None:
        lines.append("no candidate set of the data separates the two users")
    else:
        lines += [f"prompt: {snippet(pair.prompt, 100)}", pair_table(pair)]
    lines.append(COLD_RULE)
    if cold is None:
        lines.append("no replayed unseen user's ranking flips")
    else:
        flip = f"flips at feedback {cold.flip}" if cold.flip else "does not flip"
        lines.append(
            f"{cold.replayed_as}: {cold.against} of unseen {cold.user}'s {cold.total} "
            f"choices go against global BT; target ({flip}): {snippet(cold.target.prompt)}"
        )
        lines.append(cold_table(cold))
    return "\n".join(lines)
