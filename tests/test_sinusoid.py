"""The sinusoid task distribution is the paper's, and a short run really learns to adapt."""

from __future__ import annotations

import math

import pytest
import torch

from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.run import train_in
from mamlrun.runtime.errors import ConfigError
from tests.conftest import meta_test_results


def test_tasks_follow_the_papers_distribution():
    tasks = SinusoidTasks()
    batch = tasks.sample(4000, 10, 5, torch.Generator().manual_seed(0), "cpu")
    (xs, ys), (xq, yq) = batch.support, batch.query
    assert xs.shape == (4000, 10, 1) and xq.shape == (4000, 5, 1)
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    assert -5.0 <= float(xs.min()) and float(xs.max()) <= 5.0
    # uniform, not squeezed into part of the range
    assert float(amp.mean()) == pytest.approx(2.55, abs=0.1)
    assert float(phase.mean()) == pytest.approx(math.pi / 2, abs=0.1)
    # y = A sin(x - phi) for support and query alike
    for x, y in ((xs, ys), (xq, yq)):
        torch.testing.assert_close(y, amp[:, None, None] * torch.sin(x - phase[:, None, None]))


def test_sampling_is_reproducible_from_the_generator():
    tasks = SinusoidTasks()
    a = tasks.sample(3, 5, 5, torch.Generator().manual_seed(7), "cpu")
    b = tasks.sample(3, 5, 5, torch.Generator().manual_seed(7), "cpu")
    c = tasks.sample(3, 5, 5, torch.Generator().manual_seed(8), "cpu")
    assert torch.equal(a.support[0], b.support[0]) and not torch.equal(a.support[0], c.support[0])


@pytest.mark.parametrize("key,value", [("amplitude", [5.0, 0.1]), ("phase", [3.0, 1.0]), ("x_range", [1.0])])
def test_bad_ranges_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"domain.tasks.{key}="):
        SinusoidTasks(**{key: value})


@pytest.mark.slow
def test_short_run_adapts_far_better_than_before_adaptation(tmp_path, smoke_cfg):
    cfg = smoke_cfg(
        "meta_iterations=1500",
        "meta_batch=25",
        "domain.query=10",
        "eval.query=100",
        "eval.tasks=200",
        "eval.steps=10",
        "eval.shots=[10]",
        "eval.every=500",
        "eval.val_tasks=50",
        "checkpoint.every=500",
    )
    train_in(cfg, tmp_path)
    result = meta_test_results(tmp_path)[0]
    before, after = result["mean"][0], result["mean"][10]
    assert result["num_tasks"] == 200 and result["shots"] == 10
    # Measured here: about 3.2 before and 0.5 after ten steps. A model that does not adapt stays near 3.
    assert after < 0.3 * before, (before, after)
    assert (tmp_path / "adaptation.png").stat().st_size > 10_000
    assert (tmp_path / "meta_test.png").stat().st_size > 10_000
