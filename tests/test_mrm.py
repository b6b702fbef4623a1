"""MRM on synthetic users whose rewards are known mixtures of a few linear base rewards.

Every user's true reward direction is sum_k alpha_k theta_k with alpha ~ Dirichlet, so the
ground truth is exactly MRM's model class: a trained MRM must recover each unseen user's
direction from a few comparisons, which a per-user model from scratch cannot.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from personal_rm.features import PairSet
from personal_rm.mrm import (
    VARIANTS,
    Episode,
    InMemoryTasks,
    MetaRewardModel,
    MRMConfig,
    MRMNet,
    Task,
    UserWeights,
    adapt,
    build_net,
    make_optimizer,
    meta_batch_loss,
    meta_train,
    rpo_weights,
    split_support,
    training_tasks,
    user_reward,
)
from personal_rm.reward import LinearReward, margins

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, BASES = 24, 3


def synthetic_users(
    rng: np.random.Generator, thetas: np.ndarray, n_users: int, n_pairs: int, prefix: str
) -> tuple[PairSet, dict[str, np.ndarray]]:
    """Users with Dirichlet(0.3) mixtures of `thetas`; BT-noisy labels (oracle acc ~0.9)."""
    ids, chosen, rejected, directions = [], [], [], {}
    for i in range(n_users):
        user = f"{prefix}{i:03d}"
        directions[user] = rng.dirichlet(np.full(len(thetas), 0.3)) @ thetas
        a, b = rng.normal(size=(2, n_pairs, thetas.shape[1]))
        a_wins = rng.random(n_pairs) < 1 / (1 + np.exp(-4.0 * (a - b) @ directions[user]))
        chosen.append(np.where(a_wins[:, None], a, b))
        rejected.append(np.where(a_wins[:, None], b, a))
        ids += [user] * n_pairs
    return (
        PairSet(
            np.array(ids, dtype=object),
            np.concatenate(chosen).astype(np.float32),
            np.concatenate(rejected).astype(np.float32),
        ),
        directions,
    )


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(0)
    thetas = rng.normal(size=(BASES, DIM))
    thetas /= np.linalg.norm(thetas, axis=1, keepdims=True)
    train, _ = synthetic_users(rng, thetas, 160, 40, "seen")
    test, directions = synthetic_users(rng, thetas, 40, 44, "unseen")
    return {"train": train, "test": test, "directions": directions}


FAST = {"num_bases": BASES, "epochs": 30, "outer_lr": 3e-2}


@pytest.fixture(scope="module")
def mrm(world: dict) -> MetaRewardModel:
    model = MetaRewardModel(MRMConfig(**FAST))
    model.fit(world["train"])
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def accuracy(rewards, query: PairSet) -> float:
    """User-averaged pairwise accuracy."""
    m = margins(rewards, query)
    return float(np.mean([np.mean(m[rows] > 0) for rows in query.rows_by_user().values()]))


# --- recovery and few-shot accuracy ----------------------------------------------------------


def test_recovers_unseen_user_directions(mrm: MetaRewardModel, world: dict) -> None:
    test, directions = world["test"], world["directions"]
    support, query = split_support(test, 16, seed=1)
    rewards = mrm.personalize(support, test.users())
    assert all(isinstance(r, LinearReward) for r in rewards.values())
    cos = [cosine(rewards[u].theta, directions[u]) for u in directions]
    assert np.mean(cos) > 0.9, np.mean(cos)
    assert np.quantile(cos, 0.1) > 0.75, np.quantile(cos, 0.1)
    # Adaptation is doing the work: w0 alone (k=0) is a much worse fit to each user.
    cold = mrm.personalize(PairSet.empty(DIM), test.users())
    assert accuracy(rewards, query) > accuracy(cold, query) + 0.06


def test_beats_per_user_logistic_regression_at_k4(mrm: MetaRewardModel, world: dict) -> None:
    test = world["test"]
    support, query = split_support(test, 4, seed=2)
    mrm_acc = accuracy(mrm.personalize(support, test.users()), query)

    scratch = {}
    for user in test.users():
        s = support.for_user(user)
        diff = s.chosen - s.rejected  # both orientations: symmetric, no intercept
        x, y = np.concatenate([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))]
        clf = LogisticRegression(fit_intercept=False).fit(x, y)
        scratch[user] = LinearReward(clf.coef_[0].astype(np.float32))
    scratch_acc = accuracy(scratch, query)

    assert mrm_acc > 0.75, mrm_acc
    assert mrm_acc > scratch_acc + 0.1, (mrm_acc, scratch_acc)


# --- the meta-gradient -----------------------------------------------------------------------


def _tiny_problem(head: str, users: int = 2) -> tuple[MRMNet, list[Episode], MRMConfig]:
    config = MRMConfig(
        num_bases=2, head=head, hidden=3, inner_steps=2, inner_lr=0.7, rpo=False, seed=3
    )
    net = MRMNet(3, config).double()
    with torch.no_grad():
        net.w0.copy_(torch.tensor([0.3, -0.2]))
    rng = np.random.default_rng(4)
    episodes = [
        Episode(*rng.normal(size=(2, 3, 3)), *rng.normal(size=(2, 4, 3))) for _ in range(users)
    ]
    return net, episodes, config


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_second_order_meta_gradient_matches_finite_differences(head: str) -> None:
    net, episodes, config = _tiny_problem(head)
    params = dict(net.named_parameters())

    def grads(cfg: MRMConfig) -> dict[str, torch.Tensor]:
        loss, _ = meta_batch_loss(net, episodes, cfg)
        return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))

    exact = grads(config)
    first_order = grads(config.model_copy(update={"first_order": True}))
    eps, worst_second, worst_first = 1e-6, 0.0, 0.0
    for name, p in params.items():
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(meta_batch_loss(net, episodes, config)[0])
                p.view(-1)[i] -= 2 * eps
                down = float(meta_batch_loss(net, episodes, config)[0])
                p.view(-1)[i] += eps
            numeric = (up - down) / (2 * eps)
            worst_second = max(worst_second, abs(float(exact[name].reshape(-1)[i]) - numeric))
            worst_first = max(worst_first, abs(float(first_order[name].reshape(-1)[i]) - numeric))
    assert worst_second < 1e-7, worst_second
    assert worst_first > 1e-3, worst_first  # the check can tell first- from second-order


# --- RPO -------------------------------------------------------------------------------------


def test_rpo_hard_mask_keeps_exactly_the_hardest_users() -> None:
    losses = torch.from_numpy(np.random.default_rng(5).permutation(20) * 0.1 + 0.05)
    for rho, kept in [(0.25, 5), (0.5, 10), (0.1, 2), (1.0, 20)]:
        w = rpo_weights(losses, rho, gamma=0.0)
        hardest = set(torch.argsort(losses, descending=True)[:kept].tolist())
        assert set(torch.nonzero(w).flatten().tolist()) == hardest
        assert torch.allclose(w[w > 0], torch.full((kept,), 1.0 / kept, dtype=w.dtype))


def test_rpo_soft_weights_are_monotone_and_half_at_tau() -> None:
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.6, 0.4, 0.8, 0.0, 1.0])
    w = rpo_weights(losses, rho=0.5, gamma=0.1, normalize=False)
    order = torch.argsort(losses)
    assert torch.all(torch.diff(w[order]) > 0)
    assert abs(float(w[losses == 0.5]) - 0.5) < 1e-6  # tau = median = 0.5
    assert abs(float(rpo_weights(losses, 0.5, 0.1).sum()) - 1.0) < 1e-6


def test_rpo_objective_averages_the_hard_users_only() -> None:
    net, episodes, config = _tiny_problem("linear", users=8)
    hard = config.model_copy(update={"rpo": True, "rpo_rho": 0.25, "rpo_gamma": 0.0})
    objective, losses = meta_batch_loss(net, episodes, hard)
    assert len(set(losses.tolist())) == 8
    assert float(objective.detach()) == pytest.approx(float(torch.sort(losses).values[6:].mean()))
    plain, _ = meta_batch_loss(net, episodes, config)  # rpo off: the mean over users
    assert float(plain.detach()) == pytest.approx(float(losses.mean()))


# --- serving path, save / load, training loop ------------------------------------------------


def test_adapt_with_no_support_returns_w0(mrm: MetaRewardModel) -> None:
    assert mrm.net is not None
    empty = np.zeros((0, DIM), dtype=np.float32)
    weights = adapt(mrm.net, empty, empty, mrm.config)
    np.testing.assert_array_equal(weights.logits, mrm.net.w0.detach().numpy())


def test_concurrent_adaptation_matches_serial(mrm: MetaRewardModel, world: dict) -> None:
    """adapt_many only reads the net, so threads need no lock (serving adapts per request)."""
    test = world["test"]
    support, _ = split_support(test, 8, seed=7)
    users = test.users()
    groups = [users[i::7][: 2 + i] for i in range(7)] * 6  # batches of different sizes
    serial = [mrm.adapt_users(support, group) for group in groups]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda group: mrm.adapt_users(support, group), groups))
    for one, other in zip(serial, concurrent, strict=True):
        assert one.keys() == other.keys()
        for user in one:
            np.testing.assert_array_equal(one[user].logits, other[user].logits)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_save_load_round_trip_gives_identical_scores(tmp_path, world: dict, head: str) -> None:
    test = world["test"]
    support, query = split_support(test, 4, seed=6)
    if head == "linear":
        model = MetaRewardModel(MRMConfig(**{**FAST, "epochs": 2}))
    else:
        model = MetaRewardModel.variant("mrm_no_meta", **{**FAST, "head": "mlp", "epochs": 2})
    model.fit(world["train"].take(np.arange(2000)))
    model.save(tmp_path / "m")
    loaded = MetaRewardModel.load(tmp_path / "m")
    assert (loaded.name, loaded.config) == (model.name, model.config)

    before = model.adapt_users(support, test.users())
    after = loaded.adapt_users(support, test.users())
    for user in test.users():
        np.testing.assert_array_equal(before[user].logits, after[user].logits)
    np.testing.assert_array_equal(
        margins(model.personalize(support, test.users()), query),
        margins(loaded.personalize(support, test.users()), query),
    )


def test_mlp_user_reward_is_the_mixture_of_bases(world: dict) -> None:
    config = MRMConfig(num_bases=2, head="mlp")
    net = build_net(world["train"], config)
    x = world["test"].chosen[:5]
    weights = UserWeights(np.array([0.4, -1.0], dtype=np.float32))
    model = MetaRewardModel(config)
    model.net = net
    score = model.personalize(PairSet.empty(DIM), ["u"])["u"].score(x)
    bases = net.bases(torch.from_numpy(x)).detach().numpy()
    mixed = user_reward(net, weights).score(x)
    np.testing.assert_allclose(mixed, bases @ weights.mixture, rtol=1e-5)
    np.testing.assert_allclose(score, bases.mean(1), rtol=1e-5)  # w0 = 0: uniform mixture


def test_training_is_deterministic_and_all_reduces_losses_then_gradients(world: dict) -> None:
    train = world["train"].take(np.arange(1600))  # 40 users
    config = MRMConfig(**{**FAST, "epochs": 3, "tasks_per_batch": 8})

    def run(sync: bool) -> tuple[dict[str, torch.Tensor], list[list[tuple[int, ...]]]]:
        net, calls = build_net(train, config), []

        def all_reduce(tensors: list[torch.Tensor]) -> None:  # one worker: the sum is itself
            calls.append([tuple(t.shape) for t in tensors])

        tasks = InMemoryTasks.of(training_tasks(train, config), config)
        meta_train(net, tasks, config, all_reduce=all_reduce if sync else None)
        return net.state_dict(), calls

    (first, calls), (second, _), (alone, _) = run(True), run(True), run(False)
    grads = [tuple(p.shape) for p in build_net(train, config).parameters()]
    # The meta-batch's losses and which of its slots are filled, then every gradient.
    assert calls == [[(8,), (8,)], grads] * (3 * 5)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], alone[name]), name


def test_tasks_are_indexed_by_user_and_survive_a_row_round_trip(world: dict) -> None:
    train = world["train"].take(np.arange(1600))
    tasks = training_tasks(train, MRMConfig())
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert [t.user for t in tasks] == sorted(train.users())
    back = Task.from_row(tasks[3].to_row())
    assert (back.user, back.index) == (tasks[3].user, 3)
    np.testing.assert_array_equal(back.chosen, tasks[3].chosen)
    half = Task.from_row(tasks[3].to_row("float16"))  # compact storage, float32 to train on
    assert half.rejected.dtype == np.float32
    np.testing.assert_allclose(half.rejected, tasks[3].rejected, rtol=1e-3, atol=1e-3)


def test_resume_from_checkpoint_matches_uninterrupted_run(world: dict) -> None:
    train = world["train"].take(np.arange(1600))
    config = MRMConfig(**{**FAST, "epochs": 4, "tasks_per_batch": 8})
    tasks = InMemoryTasks.of(training_tasks(train, config), config)
    net = build_net(train, config)
    optimizer = make_optimizer(net, config)
    saved: dict = {}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        assert {"loss", "objective", "lr", "grad_norm"} <= metrics.keys()
        if epoch == 1:
            saved["net"] = copy.deepcopy(net.state_dict())
            saved["opt"] = copy.deepcopy(optimizer.state_dict())

    meta_train(net, tasks, config, optimizer=optimizer, on_epoch=on_epoch)
    resumed = build_net(train, config)
    resumed.load_state_dict(saved["net"])
    opt = make_optimizer(resumed, config)
    opt.load_state_dict(saved["opt"])
    meta_train(resumed, tasks, config, optimizer=opt, start_epoch=2)
    for name, value in net.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_validation_selects_the_best_epoch(world: dict) -> None:
    train = world["train"].take(np.arange(2000))
    val = world["test"].take(np.arange(440))  # 10 held-out users
    model = MetaRewardModel(MRMConfig(**{**FAST, "epochs": 5}))
    model.fit(train, val)
    accs = [h["val_acc"] for h in model.history]
    assert len(accs) == 5
    support, query = split_support(val, model.config.val_support, model.config.seed)
    assert accuracy(model.personalize(support, val.users()), query) == pytest.approx(max(accs))


def test_variants_are_configs() -> None:
    assert set(VARIANTS) == {"mrm", "mrm_no_rpo", "mrm_no_meta"}
    assert MetaRewardModel.variant("mrm_no_rpo").config.rpo is False
    assert MetaRewardModel.variant("mrm_no_meta").name == "mrm_no_meta"
    # Each ablation changes one thing: no_rpo is MRM without RPO, no_meta is no_rpo without
    # meta-learning.
    configs = {name: MetaRewardModel.variant(name).config.model_dump() for name in VARIANTS}

    def changed(a: str, b: str) -> set[str]:
        return {key for key in configs[a] if configs[a][key] != configs[b][key]}

    assert changed("mrm", "mrm_no_rpo") == {"rpo"}
    assert changed("mrm_no_rpo", "mrm_no_meta") == {"meta"}
    assert MetaRewardModel(MRMConfig(**VARIANTS["mrm_no_meta"])).name == "mrm_no_meta"
    with pytest.raises(ValueError):
        MRMConfig(bogus=1)
