"""Episodes for a batch of tasks: `rollouts` episodes per task, all environments stepped together.

The policy runs on the training device in one batched call per time step: with shared parameters
(before adaptation) or one parameter set per task (after it; vmapped). Episodes are padded to the
horizon with a mask that is 1 for every step taken while the episode ran and 0 after it ended, so
the step gymnasium's NEXT_STEP autoreset inserts after an episode's end (a reset, reward 0) never
reaches the data. Environment seeds come from the sampler's NumPy generator and action noise from
its torch generator, so a batch is a function of those two RNG states.

Under torchrun each rank samples only its `part` of the tasks but draws every task's seeds and
noise, and the ranks agree on how many steps the longest episode took, so every rank's generators
end where one process's would and a task's episodes do not depend on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mamlrun.domains.rl.base import TaskFamily
from mamlrun.models.policy import gaussian_log_prob
from mamlrun.runtime.distributed import world
from mamlrun.runtime.errors import StepFailed, UserError


class RolloutError(StepFailed):
    """An environment raised during a rollout; the loop saves the iteration's starting state, then stops."""


@dataclass
class Episodes:
    """Per-task episode tensors, task dimension first: [T, H, R, ...] (H time steps, R rollouts)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    log_probs: Tensor  # under the policy that sampled them (no graph)
    signals: dict[str, Tensor] = field(
        default_factory=dict
    )  # the family's per-step info, [T, H, R], 0 after the end

    def returns(self) -> Tensor:
        """Undiscounted return of each episode: [T, R]."""
        return (self.rewards * self.mask).sum(dim=1)

    def ever(self, signal: str) -> Tensor:
        """1.0 where an episode's signal was positive at any step it ran (Meta-World's success), else 0: [T, R]."""
        return (self.signals[signal] > 0).any(dim=1).to(self.rewards.dtype)

    @property
    def env_steps(self) -> int:
        return int(self.mask.sum())


def policy_distribution(policy: nn.Module, params: dict[str, Tensor], obs: Tensor, batched: bool):
    """(mean, log_std) for obs [T, ..., obs_dim]; params shared, or one set per task (batched).

    Shared params are expanded to one (view) per task, so every task's rows are one batched matmul
    of their own: a single [T*R, d] matmul rounds a row differently depending on how many rows
    there are (seen with MKL on AVX-512), and a torchrun rank holding 3 of 5 tasks would then
    sample different episodes than one process.
    """
    if not batched:
        params = {k: v.expand(obs.shape[0], *v.shape) for k, v in params.items()}
    return torch.func.vmap(lambda p, o: torch.func.functional_call(policy, p, (o,)))(params, obs)


class EpisodeSampler:
    """Samples `rollouts` episodes per task with a family's vector env (built once per size)."""

    def __init__(self, family: TaskFamily, policy: nn.Module, rollouts: int, device: torch.device) -> None:
        self.family, self.policy, self.rollouts, self.device = family, policy, rollouts, device
        self._envs: dict[int, Any] = {}

    def _env(self, num_envs: int):
        if num_envs not in self._envs:
            self._envs[num_envs] = self.family.make_env(num_envs)
        return self._envs[num_envs]

    def _failure(self, exc: Exception) -> RolloutError:
        """The one-line error an environment's exception becomes."""
        return RolloutError(
            f"environment {self.family.name} raised during a rollout: {type(exc).__name__}: {exc}"
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    @torch.no_grad()
    def sample(
        self,
        tasks: list[Any],
        params: dict[str, Tensor],
        batched: bool,
        rng: np.random.Generator,
        noise: torch.Generator,
        rollouts: int | None = None,
        part: slice | None = None,
    ) -> Episodes:
        """`rollouts` (default: the sampler's) episodes per task; `batched`: one parameter set per task.

        `part`: sample only `tasks[part]` (this rank's share; `params`, if batched, are theirs),
        drawing the RNGs as for all of `tasks` (see the module's docstring). Every rank must then
        call with its part; without one (rank 0's validation) no rank is waited for.
        """
        shared = part is not None
        r, horizon = rollouts or self.rollouts, self.family.horizon
        part = slice(0, len(tasks)) if part is None else part
        all_seeds = rng.integers(0, 2**31 - 1, size=len(tasks) * r)
        seeds = [int(s) for s in all_seeds[part.start * r : part.stop * r]]
        tasks = tasks[part]
        n_tasks = len(tasks)
        all_noise = (len(all_seeds) // r, r, self.family.act_dim)  # one draw per step for every task
        try:  # building, setting and resetting can fail too (e.g. an async worker that died)
            env = self._env(n_tasks * r)
            env.set_tasks([task for task in tasks for _ in range(r)])
            obs = env.reset(seeds)
        except UserError:
            raise
        except Exception as exc:
            raise self._failure(exc) from None
        d, a = self.family.obs_dim, self.family.act_dim
        out_obs = torch.zeros(horizon, n_tasks, r, d, device=self.device)
        out_act = torch.zeros(horizon, n_tasks, r, a, device=self.device)
        out_rew = torch.zeros(horizon, n_tasks, r, device=self.device)
        out_mask = torch.zeros(horizon, n_tasks, r, device=self.device)
        out_logp = torch.zeros(horizon, n_tasks, r, device=self.device)
        keys = tuple(self.family.signals)
        out_signals = {key: torch.zeros(horizon, n_tasks, r, device=self.device) for key in keys}
        alive = torch.ones(n_tasks * r, dtype=torch.bool)
        for t in range(horizon):
            o = obs.to(self.device).view(n_tasks, r, d)
            mean, log_std = policy_distribution(self.policy, params, o, batched)
            eps = torch.randn(all_noise, generator=noise, device=self.device)[part]
            action = mean + torch.exp(log_std) * eps
            out_obs[t], out_act[t] = o, action
            out_logp[t] = gaussian_log_prob(mean, log_std, action)
            out_mask[t] = alive.view(n_tasks, r).to(self.device, torch.float32)
            try:
                obs, reward, done = env.step(action.reshape(n_tasks * r, a))
            except Exception as exc:
                raise self._failure(exc) from None
            out_rew[t] = (reward * alive).view(n_tasks, r).to(self.device)
            for key in keys:
                out_signals[key][t] = (env.signals[key] * alive).view(n_tasks, r).to(self.device)
            alive = alive & ~done
            if not alive.any():
                break
        taken = t + 1
        longest = world().max(taken, self.device) if shared else taken
        for _ in range(longest - taken):  # another rank's episodes ran longer: draw its noise too
            torch.randn(all_noise, generator=noise, device=self.device)

        def tasks_first(x: Tensor) -> Tensor:
            return x.transpose(0, 1).contiguous()

        return Episodes(
            tasks_first(out_obs),
            tasks_first(out_act),
            tasks_first(out_rew),
            tasks_first(out_mask),
            tasks_first(out_logp),
            {key: tasks_first(value) for key, value in out_signals.items()},
        )
