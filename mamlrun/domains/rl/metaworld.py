"""Meta-World (Yu et al. 2019) as a meta-RL task family: ML1 and ML10, scored by success rate.

Meta-World 3.x (package `metaworld`, gymnasium 1.x, the official `mujoco` bindings; it pins
`mujoco==3.3.0`, which the locomotion tasks then run with too) is an optional extra:
`pip install 'mamlrun[metaworld]'`.

- **Tasks.** A task is one of the benchmark's own `Task`s: an environment name (`reach-v3`) and
  its pickled configuration (object and goal positions). ML1 has 50 train and 50 test tasks of one
  environment (the test goals drawn from another seed); ML10 trains on 50 tasks of each of 10
  environments and tests on 50 of each of 5 others. `task_seed` seeds the benchmark's construction,
  so every run with the same seed sees the same tasks. The goal is hidden from the observation
  (the ML benchmarks' `partially_observable=True`), so it must be found by adapting.
- **Splits.** `split="train"` draws from the train tasks (meta-training and validation),
  `split="test"` from the test tasks (the meta-test). ML10 draws its tasks class by class in a
  fixed order (task i is of environment i mod 10), so the environment classes sit in the same
  slots of the vector env at every iteration and no slot rebuilds its MuJoCo model.
- **Episodes.** Meta-World's reward (`reward_version`, v2 by default: the one Meta-World 3.x and
  Meta-World+ report) and its own time limit: `horizon` steps (500, the benchmark's), truncated,
  never terminated. An episode succeeds if `info["success"]` was 1 at any of its steps, as
  Meta-World's evaluation counts it; the vector env hands that signal to the sampler.
- **Memory.** Each environment holds its own MuJoCo model and data, about 25 MB: meta-batch 20 x
  10 episodes is 200 environments, some 5 GB.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from mamlrun.domains.rl.base import SUCCESS
from mamlrun.domains.rl.locomotion import GymVectorEnv, resolve_workers
from mamlrun.runtime.errors import ConfigError, UserError, require_int

BENCHMARKS = ("ML1", "ML10")
REWARD_VERSIONS = ("v1", "v2")
SPLITS = ("train", "test")
INSTALL_HINT = "pip install 'mamlrun[metaworld]' (make install includes it)"


def import_metaworld() -> Any:
    """The `metaworld` module, or a one-line error saying how to install it."""
    try:
        import metaworld
    except ImportError as exc:
        raise UserError(
            f"domain=metaworld needs Meta-World, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return metaworld


def environment_class(name: str) -> type:
    """Meta-World's class of environment `name` (e.g. reach-v3)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS[name]


class MetaWorldSlot(gym.Env):
    """One environment of the vector env: the Meta-World environment of its current task.

    Setting `mamlrun_task` (the attribute the vector env sets on every environment) calls the
    environment's `set_task`; a task of another environment class replaces the environment (ML10),
    so one slot holds one MuJoCo model whatever tasks pass through it. `reset` ignores its seed:
    Meta-World's tasks fix every initial position, so an episode's start is a function of its task.
    """

    def __init__(self, first: str, reward_version: str, horizon: int) -> None:
        self.reward_version, self.horizon = reward_version, horizon
        self._env = self._build(first)
        self._name = first
        self.observation_space, self.action_space = self._env.observation_space, self._env.action_space

    def _build(self, name: str) -> gym.Env:
        env = environment_class(name)(reward_function_version=self.reward_version)
        env.max_path_length = self.horizon  # Meta-World truncates here itself (and refuses a step after)
        return env

    @property
    def mamlrun_task(self) -> Any:
        return getattr(self, "_task", None)

    @mamlrun_task.setter
    def mamlrun_task(self, task: Any) -> None:
        if task.env_name != self._name:
            self._env.close()
            self._env, self._name = self._build(task.env_name), task.env_name
        self._env.set_task(task)
        self._task = task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._env.reset()

    def step(self, action: np.ndarray):
        return self._env.step(action)

    def close(self) -> None:
        self._env.close()


def make_slot(first: str, reward_version: str, horizon: int) -> MetaWorldSlot:
    """A module-level factory, so that `vectorization=async` can pickle it for its workers."""
    return MetaWorldSlot(first, reward_version, horizon)


class MetaWorldFamily:
    """Meta-World's ML1 (one environment, parametric goals) or ML10 (10 train, 5 test environments).

    Args:
        benchmark: ML1 | ML10.
        env_name: ML1's environment (e.g. reach-v3, push-v3, pick-place-v3); ML10 takes none.
        horizon: episode length (Meta-World's is 500).
        reward_version: v2 (Meta-World 3.x's default) | v1 (the original paper's rewards).
        task_seed: seeds the benchmark's task construction (the same tasks for every run).
        vectorization: sync | async (`workers` processes, a contiguous group of environments each).
        workers: async's process count; None = the usable CPU cores (sync: None or 1).
    """

    episode_figure = None  # 39-dimensional observations: the success and return curves say more
    signals = (SUCCESS,)  # per-step info the sampler keeps: an episode succeeds if it was ever 1
    held_out = True  # the meta-test's tasks are the benchmark's test tasks, not the training ones

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str | None = "reach-v3",
        horizon: int = 500,
        reward_version: str = "v2",
        task_seed: int = 0,
        vectorization: str = "sync",
        workers: int | None = None,
    ) -> None:
        if benchmark not in BENCHMARKS:
            raise ConfigError("domain.tasks.benchmark", benchmark, f"choose {' or '.join(BENCHMARKS)}")
        if reward_version not in REWARD_VERSIONS:
            raise ConfigError(
                "domain.tasks.reward_version", reward_version, f"choose {' or '.join(REWARD_VERSIONS)}"
            )
        if vectorization not in ("sync", "async"):
            raise ConfigError("domain.tasks.vectorization", vectorization, "choose sync or async")
        require_int("domain.horizon", horizon, 1, "the episode horizon")
        require_int("domain.tasks.task_seed", task_seed, 0, "the seed of the benchmark's tasks")
        self.workers = resolve_workers(workers, vectorization)
        metaworld = import_metaworld()
        if benchmark == "ML10" and env_name is not None:
            raise ConfigError(
                "domain.tasks.env_name",
                env_name,
                "ML10 trains on its own 10 environments and tests on 5 others: set domain.tasks.env_name=null "
                "(or benchmark=ML1 for one environment)",
            )
        if benchmark == "ML1" and env_name not in metaworld.ML1.ENV_NAMES:
            raise ConfigError(
                "domain.tasks.env_name",
                env_name,
                f"ML1 environments are {', '.join(metaworld.ML1.ENV_NAMES)}",
            )
        self.benchmark, self.env_name, self.task_seed = benchmark, env_name, task_seed
        self.horizon, self.reward_version, self.vectorization = horizon, reward_version, vectorization
        self.tasks_by_split = benchmark_tasks(benchmark, env_name, task_seed)
        probe = make_slot(self.first_class, reward_version, horizon)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        probe.close()
        self.name = f"Meta-World {benchmark}" + (f" {env_name}" if env_name else "")

    @property
    def first_class(self) -> str:
        return next(iter(self.tasks_by_split["train"]))

    def classes(self, split: str) -> list[str]:
        """The environment names of a split, in the order tasks are drawn."""
        return list(self.tasks_by_split[check_split(split)])

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Any]:
        """`n` of the split's tasks: task i is of environment class i mod (the split's classes),
        drawn uniformly from that class's tasks."""
        by_name = self.tasks_by_split[check_split(split)]
        names, chosen = list(by_name), []
        for i in range(n):
            pool = by_name[names[i % len(names)]]
            chosen.append(pool[int(rng.integers(len(pool)))])
        return chosen

    def make_env(self, num_envs: int) -> GymVectorEnv:
        make = functools.partial(make_slot, self.first_class, self.reward_version, self.horizon)
        return GymVectorEnv(
            make, num_envs, self.vectorization, workers=self.workers, task_value=None, signals=self.signals
        )


@functools.lru_cache(maxsize=4)
def benchmark_tasks(benchmark: str, env_name: str | None, task_seed: int) -> dict[str, dict[str, list[Any]]]:
    """split -> environment name -> its tasks, as Meta-World builds them for `task_seed` (built once
    per process: ML10 resets each of its 15 environments 50 times to draw its goals, some 20 s)."""
    metaworld = import_metaworld()
    suite = metaworld.ML1(env_name, seed=task_seed) if benchmark == "ML1" else metaworld.ML10(seed=task_seed)
    return {
        "train": by_class(suite.train_tasks, list(suite.train_classes)),
        "test": by_class(suite.test_tasks, list(suite.test_classes)),
    }


def by_class(tasks: Sequence[Any], names: Sequence[str]) -> dict[str, list[Any]]:
    """The tasks of each environment class, in the benchmark's class order."""
    return {name: [t for t in tasks if t.env_name == name] for name in names}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose {' or '.join(SPLITS)}")
    return split
