"""Meta-World (domain=metaworld): real Meta-World 3.x environments on MuJoCo, ML1 and ML10.

The benchmark's train and test tasks reach the right phases (meta-training and validation draw
train tasks, the meta-test held-out ones), ML10's classes keep their slots, success is Meta-World's
info["success"] ever being 1 within an episode, episodes are truncated at the horizon, and the
meta-test reports return and success rate everywhere a run writes its results.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import compose_config, run_cli
from tests.test_wandb import offline_run, read_records

metaworld = pytest.importorskip(
    "metaworld", reason="Meta-World is not installed (pip install 'mamlrun[metaworld]'; make install has it)"
)

from mamlrun.domains.rl.metaworld import MetaWorldFamily  # noqa: E402
from mamlrun.domains.rl.sampler import Episodes, EpisodeSampler  # noqa: E402
from mamlrun.models.policy import GaussianPolicy  # noqa: E402
from mamlrun.trainers.rl.meta_test import meta_test, validate  # noqa: E402
from mamlrun.trainers.rl.parts import build  # noqa: E402

CPU = torch.device("cpu")


def goal_rand_vec(task) -> np.ndarray:
    """A Meta-World task's object and goal positions (what makes two tasks differ)."""
    import pickle

    return np.asarray(pickle.loads(task.data)["rand_vec"])


def test_ml1_splits_are_the_benchmarks_train_and_held_out_goals():
    family = MetaWorldFamily("ML1", "reach-v3", horizon=20)
    suite = metaworld.ML1("reach-v3", seed=0)
    train = family.sample_tasks(30, np.random.default_rng(3), split="train")
    test = family.sample_tasks(30, np.random.default_rng(3), split="test")
    train_goals = {goal_rand_vec(t).tobytes() for t in suite.train_tasks}
    test_goals = {goal_rand_vec(t).tobytes() for t in suite.test_tasks}
    assert not train_goals & test_goals  # the held-out goals are other goals
    assert all(goal_rand_vec(t).tobytes() in train_goals for t in train)
    assert all(goal_rand_vec(t).tobytes() in test_goals for t in test)
    again = family.sample_tasks(30, np.random.default_rng(3), split="train")
    assert [goal_rand_vec(t).tobytes() for t in again] == [goal_rand_vec(t).tobytes() for t in train]
    assert len({goal_rand_vec(t).tobytes() for t in train}) > 15  # drawn, not one task repeated
    assert (family.obs_dim, family.act_dim) == (39, 4)
    with pytest.raises(ValueError, match="split='val'"):
        family.sample_tasks(2, np.random.default_rng(0), split="val")


def test_ml10_draws_each_class_in_its_slot_and_tests_on_the_five_held_out_environments():
    family = MetaWorldFamily("ML10", None, horizon=10)
    train_names = family.classes("train")
    test_names = family.classes("test")
    assert len(train_names) == 10 and len(test_names) == 5 and not set(train_names) & set(test_names)
    assert set(test_names) == set(metaworld.ML10(seed=0).test_classes)
    tasks = family.sample_tasks(20, np.random.default_rng(0))
    assert [t.env_name for t in tasks] == [train_names[i % 10] for i in range(20)]
    held_out = family.sample_tasks(5, np.random.default_rng(0), split="test")
    assert [t.env_name for t in held_out] == test_names


def reach_actions(envs, obs: torch.Tensor) -> torch.Tensor:
    """A proportional controller to each environment's (hidden) goal: hand position obs[:3]."""
    goals = np.stack([slot._env._target_pos for slot in envs.envs.envs])
    return torch.as_tensor(np.clip(10.0 * (goals - obs[:, :3].numpy()), -1.0, 1.0)).float()


def test_success_is_metaworlds_info_and_episodes_are_truncated_at_the_horizon():
    family = MetaWorldFamily("ML1", "reach-v3", horizon=60)
    tasks = family.sample_tasks(2, np.random.default_rng(1))
    envs = family.make_env(2)
    try:
        envs.set_tasks(tasks)
        obs = envs.reset([0, 1])
        seen, done_at = np.zeros(2), []
        for t in range(60):
            actions = reach_actions(envs, obs)
            actions[1] = 0.0  # the second arm stays where it starts
            obs, _, done = envs.step(torch.cat([actions, torch.zeros(2, 1)], dim=1))
            seen = np.maximum(seen, envs.signals["success"].numpy())
            if done.any():
                done_at.append(t)
                assert done.all()
        assert done_at == [59]  # truncated at the horizon, never terminated on success
        assert seen.tolist() == [1.0, 0.0]
    finally:
        envs.close()


def test_an_episode_counts_as_a_success_only_for_steps_it_ran():
    signal = torch.zeros(1, 4, 2)
    signal[0, 3, 0] = 1.0  # episode 0 succeeds at its last step
    episodes = Episodes(*(torch.zeros(1, 4, 2) for _ in range(5)), signals={"success": signal})
    assert episodes.ever("success").tolist() == [[1.0, 0.0]]


def test_the_sampler_keeps_success_per_step_and_zero_after_an_episode_ends():
    family = MetaWorldFamily("ML1", "reach-v3", horizon=12)
    torch.manual_seed(0)
    policy = GaussianPolicy(family.obs_dim, family.act_dim, hidden=[8])
    sampler = EpisodeSampler(family, policy, rollouts=2, device=CPU)
    try:
        tasks = family.sample_tasks(3, np.random.default_rng(0))
        episodes = sampler.sample(
            tasks,
            dict(policy.named_parameters()),
            False,
            np.random.default_rng(1),
            torch.Generator().manual_seed(2),
        )
    finally:
        sampler.close()
    assert episodes.signals["success"].shape == (3, 12, 2)
    assert episodes.mask.sum(dim=1).eq(12).all()  # every episode ran to the horizon
    assert set(episodes.signals["success"].unique().tolist()) <= {0.0, 1.0}


def test_async_workers_sample_the_very_episodes_sync_does():
    """vectorization=async (2 worker processes, a group of slots each) against sync, on two batches
    of different goals: the tasks reach the workers' environments and the success signal comes back."""
    torch.manual_seed(0)
    policy = GaussianPolicy(39, 4, hidden=[8])
    params = {k: v.detach() for k, v in policy.named_parameters()}
    batches = {}
    for vectorization, workers in (("sync", None), ("async", 2)):
        family = MetaWorldFamily("ML1", "reach-v3", horizon=15, vectorization=vectorization, workers=workers)
        sampler = EpisodeSampler(family, policy, rollouts=2, device=CPU)
        try:
            batches[vectorization] = [
                sampler.sample(
                    family.sample_tasks(3, np.random.default_rng(seed)),
                    params,
                    False,
                    np.random.default_rng(seed),
                    torch.Generator().manual_seed(seed),
                )
                for seed in (0, 1)
            ]
        finally:
            sampler.close()
    for a, b in zip(batches["sync"], batches["async"], strict=True):
        for name in ("obs", "actions", "rewards", "mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.signals["success"], b.signals["success"])
    first, second = batches["sync"]
    assert not torch.equal(first.rewards, second.rewards)  # other goals: other rewards


def test_validation_draws_train_tasks_and_the_meta_test_held_out_ones(monkeypatch, tmp_path):
    cfg = compose_config(["experiment=ml1_reach_smoke"])
    parts = build(cfg)
    splits = []
    original = parts.tasks.sample_tasks

    def recording(n, rng, split="train"):
        splits.append(split)
        return original(n, rng, split=split)

    monkeypatch.setattr(parts.tasks, "sample_tasks", recording)
    try:
        assert parts.validation_key == "val/success_step1" and parts.select_by == "success"
        value = validate(parts)
        assert 0.0 <= value <= 100.0
        outcome = meta_test(parts, tmp_path)
    finally:
        parts.close()
    assert splits == ["train", "test"]
    assert [spec.name for spec, _ in outcome.panels] == ["return", "success"]
    assert "held-out" in outcome.description


@pytest.mark.parametrize("preset", ["ml1_reach_smoke", "ml10_smoke"])
def test_the_presets_meta_test_reports_return_and_success_everywhere(tmp_path, preset):
    run = tmp_path / "run"
    proc = run_cli("train", f"experiment={preset}", "logger=wandb", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = compose_config([f"experiment={preset}"])
    results = json.loads((run / "eval.json").read_text())["results"]
    assert [(r["metric"], r["unit"]) for r in results] == [("return", ""), ("success", "%")]
    success = results[1]
    assert success["num_tasks"] == cfg.eval.tasks and len(success["mean"]) == cfg.eval.steps + 1
    assert all(0.0 <= m <= 100.0 for m in success["mean"])
    table = (run / "table.txt").read_text()
    assert "success, " in table and "return, " in table
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/success_step1" in m for m in metrics)
    train = [m for m in metrics if "train/success_pre" in m]
    assert len(train) == cfg.meta_iterations and all(0 <= m["train/success_post"] <= 100 for m in train)
    history = [
        {item.key or "/".join(item.nested_key) for item in r.history.item}
        for r in read_records(offline_run(run))
        if r.HasField("history")
    ]
    assert any(f"eval/success_k{cfg.eval.episodes}_step1" in keys for keys in history)  # the W&B run has it
    assert (run / "meta_test.png").stat().st_size > 10_000


BLOCKER = "raise ImportError(\"No module named 'metaworld'\")\n"


def test_without_the_extra_the_error_says_how_to_install_it(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "metaworld.py").write_text(BLOCKER)  # what an environment without the extra sees
    proc = run_cli(
        "train",
        "experiment=ml1_reach_smoke",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"PYTHONPATH": str(blocked)},
        fresh=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mamlrun[metaworld]'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
