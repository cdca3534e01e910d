"""MuJoCo locomotion tasks (the paper's section 5.3) on gymnasium v5 and the official `mujoco` bindings.

The environment is gymnasium's own (`HalfCheetah-v5`, `Ant-v5`) with its reward replaced:

- HalfCheetah velocity: -|v_x - v*| - 0.05 |a|^2, v* ~ U[0, 2]
- HalfCheetah direction: d v_x - 0.05 |a|^2, d = +-1
- Ant velocity: -|v_x - v*| + 1.0 + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2, v* ~ U[0, 3]
- Ant direction: d v_x + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2

Actions are clipped to [-1, 1] before `step`. HalfCheetah never terminates; Ant terminates when
its torso leaves z in [0.2, 1.0] (gymnasium's healthy range). The time limit is set to the
family's horizon (v5's default is 1000). The vector env holds each environment's task and
computes the rewards of a whole vector step at once from gymnasium's step info (x_velocity, and
Ant's clipped contact cost), so no Python wrapper runs per environment and per step; the task is
also set on each unwrapped environment (`mamlrun_task`) for code that inspects it.

`vectorization=async` spreads the environments over `workers` processes, a contiguous group each
(not a process per environment, as gymnasium's AsyncVectorEnv would): each worker steps its group
with the same SyncVectorEnv `sync` uses, so the same seeds give the same episodes, bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import pickle
import signal
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import Tensor

from mamlrun.runtime.errors import ConfigError, UserError, require_int
from mamlrun.runtime.threads import usable_cores

TASK_ATTR = "mamlrun_task"
OBJECTIVES = ("velocity", "direction")


def locomotion_reward(
    env_id: str,
    kind: str,
    tasks: np.ndarray,
    x_velocity: np.ndarray,
    actions: np.ndarray,
    contact_cost: np.ndarray | None,
) -> np.ndarray:
    """The meta-RL rewards of DESIGN.md for a batch of steps, one per environment (pure, so tests
    can check it by hand). `actions` are the clipped actions [n, act_dim]; `contact_cost` is Ant's
    5e-4 |clip(cfrc_ext, -1, 1)|^2 per env (gymnasium reports it as -info["reward_contact"])."""
    control = np.sum(np.square(actions), axis=-1)
    if env_id.startswith("HalfCheetah"):
        progress = -np.abs(x_velocity - tasks) if kind == "velocity" else tasks * x_velocity
        return progress - 0.05 * control
    contact = np.zeros_like(control) if contact_cost is None else contact_cost
    progress = (-np.abs(x_velocity - tasks) + 1.0) if kind == "velocity" else tasks * x_velocity
    return progress + 0.05 - 0.005 * control - contact


def quiet_mujoco_deprecations() -> None:
    """Drop MuJoCo's 'settotalmass is deprecated' warning (gymnasium's own half_cheetah.xml uses
    it, so every env built would print it); any other MuJoCo warning still reaches Python's
    `warnings`. Process-wide, so it is installed in each (async) worker too."""
    import warnings

    import mujoco

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)

    mujoco.set_mju_user_warning(handler)


#: Vectorised reward: (tasks [n], clipped actions [n, a], the vector env's step info) -> rewards [n].
TaskRewardFn = Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]

#: Signals a sampling worker ignores: the main process decides when to stop (it finishes the
#: iteration and saves on SIGINT/SIGTERM/submitit's USR2) and then closes its workers.
_WORKER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_POLL_S = 1.0  # how often a wait for a worker's reply checks that the worker is still alive
_CLOSE_S = 5.0  # how long close() waits for a worker to exit before it kills it


def resolve_workers(workers: object, vectorization: str) -> int:
    """`domain.tasks.workers` checked and resolved: null -> the usable cores (async: the CPU
    affinity capped by a cgroup quota, what Slurm or a container grants) or 1 (sync).

    sync steps every environment in this process, so it takes no worker count other than 1."""
    value = require_int("domain.tasks.workers", workers, 1, "the number of sampling processes", optional=True)
    if vectorization == "sync":
        if value not in (None, 1):
            raise ConfigError("domain.tasks.workers", workers, "sync uses 1 process; set vectorization=async")
        return 1
    return usable_cores() if value is None else value


def split_evenly(num_envs: int, groups: int) -> list[tuple[int, int]]:
    """[start, stop) of `groups` contiguous groups of environments whose sizes differ by at most 1."""
    groups = max(1, min(groups, num_envs))
    edges = [num_envs * g // groups for g in range(groups + 1)]
    return list(itertools.pairwise(edges))


class WorkerCrashed(RuntimeError):
    """A sampling worker process died (killed, out of memory, a crash in native code)."""


def _group_worker(
    make: Callable[[], gym.Env],
    start: int,
    stop: int,
    obs_buffer: Any,
    obs_dtype: str,
    obs_shape: tuple[int, ...],
    conn: Connection,
) -> None:
    """One worker process: a SyncVectorEnv over environments [start, stop) of the vector env.

    The same class, autoreset mode and per-environment seeds as `vectorization=sync`, so every
    environment runs exactly as it would there. Observations go to the shared buffer (rows
    [start, stop)); rewards, done flags and info come back through the pipe; an exception is sent
    back to be raised in the main process. Ends on "close" or when the main process is gone."""
    for sig in _WORKER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    envs: SyncVectorEnv | None = None
    try:
        envs = SyncVectorEnv([make for _ in range(stop - start)], autoreset_mode=AutoresetMode.NEXT_STEP)
        rows = np.frombuffer(obs_buffer, dtype=obs_dtype).reshape(-1, *obs_shape)[start:stop]
        conn.send(("ok", None))
        while True:
            try:
                command, data = conn.recv()
            except (EOFError, OSError):  # the main process is gone
                return
            if command == "close":
                return
            try:
                if command == "step":
                    obs, reward, terminated, truncated, info = envs.step(data)
                    rows[:] = obs
                    reply: Any = (reward, terminated, truncated, info)
                elif command == "reset":
                    obs, reply = envs.reset(seed=data)
                    rows[:] = obs
                else:  # set_attr
                    envs.set_attr(*data)
                    reply = None
            except Exception as exc:  # the main process raises it
                conn.send(("error", _portable(exc)))
            else:
                conn.send(("ok", reply))
    except Exception as exc:  # building the environments failed
        with contextlib.suppress(OSError):
            conn.send(("error", _portable(exc)))
    finally:
        if envs is not None:
            envs.close()


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (so the main process raises the same type and message), else
    a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _merge_infos(infos: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """The info dict SyncVectorEnv would return for all groups together: each key's per-group
    arrays concatenated, with a group that lacks the key filled the way SyncVectorEnv fills a
    missing environment (0, False, or None for objects)."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for info in infos for k in info):
        sample = next(info[key] for info in infos if key in info)
        if isinstance(sample, dict):
            merged[key] = _merge_infos([info.get(key, {}) for info in infos], sizes)
            continue
        parts = []
        for info, size in zip(infos, sizes, strict=True):
            if key in info:
                parts.append(info[key])
            elif sample.dtype == object:
                parts.append(np.full((size, *sample.shape[1:]), None, dtype=object))
            else:
                parts.append(np.zeros((size, *sample.shape[1:]), dtype=sample.dtype))
        merged[key] = np.concatenate(parts)
    return merged


def _shutdown(conns: list[Connection], processes: list[BaseProcess]) -> None:
    """Stop the workers: ask each to close, wait a little, then kill what is left. Never raises
    (it runs on every exit path, after errors too)."""
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("close", None))
    deadline = time.monotonic() + _CLOSE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()  # SIGKILL: the workers ignore SIGTERM
            process.join(_CLOSE_S)
    for conn in conns:
        conn.close()


class GroupedAsyncVectorEnv:
    """`num_envs` environments stepped by `workers` processes, each holding one contiguous group.

    gymnasium's AsyncVectorEnv runs a process per environment: a meta-batch of 40 tasks x 20
    episodes would be 800 processes, each woken for one MuJoCo step of some 40 microseconds. Here each
    worker steps a SyncVectorEnv of its group (the very class `sync` uses), observations come back
    through shared memory, and the results are the ones `sync` gives for the same seeds. The part
    of gymnasium's VectorEnv API that GymVectorEnv uses: reset, step, set_attr, close.

    Workers start from a fork server (no copy of this process's threads or open files), preloaded
    with this module so that torch is imported once. A worker that dies makes the waiting call
    raise `WorkerCrashed` (the pipe reports end-of-file, or the process is found dead) instead of
    hanging; close() stops every worker and is also run when the object is collected.
    """

    def __init__(self, make: Callable[[], gym.Env], num_envs: int, workers: int) -> None:
        probe = make()
        self.single_action_space = probe.action_space
        obs_space = probe.observation_space
        probe.close()
        self.num_envs = num_envs
        self.bounds = split_evenly(num_envs, workers)
        self.sizes = [stop - start for start, stop in self.bounds]
        dtype, shape = np.dtype(obs_space.dtype), tuple(obs_space.shape)
        try:
            pickle.dumps(make)
        except Exception as exc:
            raise TypeError(
                f"vectorization=async needs an environment factory that pickles ({exc})"
            ) from None
        # a fork server where there is one (Linux, macOS): workers forked from it start fast and
        # share no threads, locks or pipes with this process; elsewhere spawn
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload([__name__])
        buffer = ctx.RawArray("b", num_envs * int(np.prod(shape)) * dtype.itemsize)
        self._obs = np.frombuffer(buffer, dtype=dtype).reshape(num_envs, *shape)
        self._conns: list[Connection] = []
        self._processes: list[BaseProcess] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._conns, self._processes)
        self._broken: str | None = None
        try:
            for index, (start, stop) in enumerate(self.bounds):
                ours, theirs = ctx.Pipe()
                process = ctx.Process(
                    target=_group_worker,
                    args=(make, start, stop, buffer, dtype.str, shape, theirs),
                    name=f"mamlrun-sampler-{index}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self._conns.append(ours)
                self._processes.append(process)
            self._receive(starting=True)  # each worker has built its environments
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self.bounds)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _send(self, command: str, data: Sequence[Any]) -> None:
        if self.closed:
            raise RuntimeError("the sampling workers were closed")
        if self._broken is not None:
            raise WorkerCrashed(self._broken)
        for index, (conn, item) in enumerate(zip(self._conns, data, strict=True)):
            try:
                conn.send((command, item))
            except OSError:  # the worker is gone (its end of the pipe is closed)
                raise self._crashed(index) from None

    def _crashed(self, index: int, starting: bool = False) -> WorkerCrashed:
        """The error for a worker found dead; every later call raises it too."""
        process = self._processes[index]
        process.join(_POLL_S)
        start, stop = self.bounds[index]
        self._broken = (
            f"sampling worker {index} of {self.workers} (environments {start}-{stop - 1}) "
            f"stopped with exit code {process.exitcode}"
        )
        if starting:  # e.g. a script without the `if __name__ == "__main__":` guard
            self._broken += " while starting (its error is printed above)"
        return WorkerCrashed(self._broken)

    def _receive(self, starting: bool = False) -> list[Any]:
        """Every worker's reply, in order; a worker's exception is raised (after all replies are
        in, so the pipes stay in step), a dead worker raises WorkerCrashed."""
        replies, error = [], None
        for index, (conn, process) in enumerate(zip(self._conns, self._processes, strict=True)):
            try:
                while not conn.poll(_POLL_S):
                    if not process.is_alive() and not conn.poll(0):
                        raise EOFError
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise self._crashed(index, starting) from None
            if status == "error" and error is None:
                error = payload
            replies.append(payload)
        if error is not None:
            raise error
        return replies

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        self._send("set_attr", [(name, list(values[a:b])) for a, b in self.bounds])
        self._receive()

    def reset(self, *, seed: Sequence[int]) -> tuple[np.ndarray, dict[str, Any]]:
        self._send("reset", [list(seed[a:b]) for a, b in self.bounds])
        infos = self._receive()
        return self._obs.copy(), _merge_infos(infos, self.sizes)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._send("step", [actions[a:b] for a, b in self.bounds])
        replies = self._receive()
        reward, terminated, truncated = (np.concatenate([r[i] for r in replies]) for i in range(3))
        return (
            self._obs.copy(),
            reward,
            terminated,
            truncated,
            _merge_infos([r[3] for r in replies], self.sizes),
        )

    def close(self) -> None:
        self._finalizer()


class GymVectorEnv:
    """A gymnasium vector env of `num_envs` copies of `make()`; tensors in and out.

    Actions are clipped to the action space's bounds before the step. The tasks are set on every
    unwrapped environment (`mamlrun_task`, through `set_attr`, so they reach the right object under
    any wrapper stack) and kept here as an array: with `task_reward` the rewards of a whole vector
    step are computed from the step's info in one NumPy expression instead of a Python wrapper per
    environment (that wrapper cost the sampler 30% of its time on HalfCheetah).

    `vectorization`: sync steps every environment in this process; async splits them into
    `workers` contiguous groups, one process each (GroupedAsyncVectorEnv), with the same results.
    `task_value`: what each environment's `mamlrun_task` is set to (float: a locomotion goal;
    None: the task itself). `signals`: step-info keys kept after each step in `self.signals`
    (tensors [num_envs]; Meta-World's success), for the sampler.
    """

    def __init__(
        self,
        make: Callable[[], gym.Env],
        num_envs: int,
        vectorization: str = "sync",
        task_reward: TaskRewardFn | None = None,
        workers: int = 1,
        task_value: Callable[[Any], Any] | None = float,
        signals: Sequence[str] = (),
    ) -> None:
        # NEXT_STEP autoreset: the step after an episode ends is a reset "dummy" step; the sampler
        # masks everything after an episode's end, so that step never reaches the data.
        if vectorization == "sync":
            self.envs: SyncVectorEnv | GroupedAsyncVectorEnv = SyncVectorEnv(
                [make for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP
            )
        else:
            self.envs = GroupedAsyncVectorEnv(make, num_envs, workers)
        self.num_envs, self.task_reward, self.task_value = num_envs, task_reward, task_value
        self.signal_keys = tuple(signals)
        self.signals: dict[str, Tensor] = {}
        space = self.envs.single_action_space
        self.low, self.high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        self.tasks = np.zeros(num_envs)

    def set_tasks(self, tasks: list[Any]) -> None:
        values = list(tasks) if self.task_value is None else [self.task_value(t) for t in tasks]
        self.envs.set_attr(TASK_ATTR, values)
        if self.task_reward is not None:
            self.tasks = np.asarray(tasks, dtype=np.float64)

    def reset(self, seeds: list[int]) -> Tensor:
        obs, _ = self.envs.reset(seed=[int(s) for s in seeds])
        return torch.as_tensor(obs, dtype=torch.float32)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        clipped = np.clip(actions.detach().cpu().numpy().astype(np.float64), self.low, self.high)
        obs, reward, terminated, truncated, info = self.envs.step(clipped)
        if self.task_reward is not None:
            reward = self.task_reward(self.tasks, clipped, info)
        zeros = np.zeros(self.num_envs)  # an environment resetting this step reports no info
        self.signals = {
            key: torch.as_tensor(np.asarray(info.get(key, zeros), dtype=np.float32))
            for key in self.signal_keys
        }
        done = torch.as_tensor(np.logical_or(terminated, truncated))
        return (torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(reward, dtype=torch.float32), done)

    def close(self) -> None:
        self.envs.close()


class LocomotionFamily:
    """Velocity or direction tasks for a gymnasium MuJoCo locomotion env.

    Args:
        env_id: gymnasium id, `HalfCheetah-v5` or `Ant-v5` (others of the same kind work if their
            step info reports x_velocity).
        task: velocity | direction.
        velocity_range: [low, high] of the goal velocity (velocity tasks).
        horizon: episode length (the time limit).
        vectorization: sync (every environment in this process) | async (`workers` processes,
            each stepping a contiguous group of the environments; the same episodes as sync).
        workers: async's process count; None = the usable CPU cores (sync: None or 1).
    """

    episode_figure = None  # paths in 17 or 27 dimensions: the return curve says more
    signals: tuple[str, ...] = ()  # scored by return alone
    held_out = False  # train and test goals from one distribution

    def __init__(
        self,
        env_id: str,
        task: str = "velocity",
        velocity_range: Sequence[float] = (0.0, 2.0),
        horizon: int = 200,
        vectorization: str = "sync",
        workers: int | None = None,
    ) -> None:
        if task not in OBJECTIVES:
            raise ConfigError("domain.tasks.task", task, f"choose {' or '.join(OBJECTIVES)}")
        if vectorization not in ("sync", "async"):
            raise ConfigError("domain.tasks.vectorization", vectorization, "choose sync or async")
        require_int("domain.horizon", horizon, 1, "the episode horizon")
        self.workers = resolve_workers(workers, vectorization)
        low, high = (float(v) for v in velocity_range)
        if not low <= high:
            raise ConfigError("domain.tasks.velocity_range", list(velocity_range), "need low <= high")
        quiet_mujoco_deprecations()
        try:
            probe = gym.make(env_id)
        except gym.error.Error as exc:
            known = ", ".join(i for i in ("HalfCheetah-v5", "Ant-v5"))
            raise UserError(
                f"domain.tasks.env_id={env_id!r} is not a gymnasium environment here ({exc}); "
                f"mamlrun's locomotion tasks use {known}"
            ) from None
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        probe.close()
        self.env_id, self.kind, self.velocity_range = env_id, task, (low, high)
        self.horizon, self.vectorization = horizon, vectorization
        self.name = f"{env_id} {task}"

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[float]:
        """Goal velocities or directions; train and test tasks come from one distribution (the split is ignored)."""
        if self.kind == "velocity":
            return [float(v) for v in rng.uniform(*self.velocity_range, size=n)]
        return [float(d) for d in rng.choice([-1.0, 1.0], size=n)]

    def make_one(self) -> gym.Env:
        """One environment: gymnasium's, time-limited to the horizon (its own reward; the vector
        env replaces it with the task's)."""
        quiet_mujoco_deprecations()
        env = gym.make(self.env_id, max_episode_steps=self.horizon)
        setattr(env.unwrapped, TASK_ATTR, 0.0)
        return env

    def task_reward(self, tasks: np.ndarray, actions: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """The task rewards of one vector step from gymnasium's step info (x_velocity, reward_contact).

        Environments that were resetting this step (the autoreset dummy step) have no x_velocity
        in their info; their reward is 0 and the sampler masks it anyway."""
        zeros = np.zeros(len(tasks))
        contact = -info.get("reward_contact", zeros) if self.env_id.startswith("Ant") else None
        return locomotion_reward(
            self.env_id, self.kind, tasks, info.get("x_velocity", zeros), actions, contact
        )

    def make_env(self, num_envs: int) -> GymVectorEnv:
        return GymVectorEnv(self.make_one, num_envs, self.vectorization, self.task_reward, self.workers)
