"""A real W&B run in offline mode: its local files hold the logged config and metrics."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import run_cli, smoke_overrides

try:
    from wandb.proto import wandb_internal_pb2
except ImportError:  # pragma: no cover - wandb is a hard dependency
    wandb_internal_pb2 = None

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" magic (4) + 0xBEE1 (2) + version (1), then LevelDB-log records


def read_records(path: Path) -> list:
    """Decode a .wandb transaction log (LevelDB log format: 32 KiB blocks of CRC/len/type records)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - (pos % BLOCK)
        if room < 7:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(run_dir: Path) -> Path:
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, f"no offline W&B run under {run_dir / 'wandb'}"
    return runs[-1]


def test_offline_run_files_hold_the_config_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", *smoke_overrides(run_dir, "logger=wandb", "meta_batch=3", "logger.tags=[ci]"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    records = read_records(offline_run(run_dir))
    config = {
        item.key: item.value_json
        for r in records
        for field in ("run", "config")
        if r.HasField(field)
        for item in (r.run.config.update if field == "run" else r.config.update)
    }
    assert config["meta_batch"] == "3"
    assert json.loads(config["domain"])["name"] == "sinusoid"
    assert json.loads(config["order"]) == {
        "name": "second",
        "first_order": False,
        "first_order_iterations": 0,
    }
    assert json.loads(config["logger"])["tags"] == ["ci"]
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    losses = [h for h in history if "train/loss" in h]
    assert [int(h["_step"]) for h in losses] == [2, 4]
    assert all(float(h["train/loss"]) > 0 for h in losses)
    assert any("eval/mse_k5_step2" in h for h in history)
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert offline_run(run_dir).name == f"run-{run_id}.wandb"
    # the meta-test table is printed once, after W&B's closing summary (not also before it)
    assert (proc.stdout + proc.stderr).count("mse K=5 (n=8)") == 1, proc.stderr


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir, "logger=wandb"), cwd=tmp_path, check=True)
    first_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    run_cli("train", *smoke_overrides(run_dir, "logger=wandb", "meta_iterations=6"), cwd=tmp_path, check=True)
    assert (run_dir / "wandb_run_id.txt").read_text().strip() == first_id
    assert {p.name for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")} == {
        f"run-{first_id}.wandb"
    }


def test_a_wandb_failure_does_not_stop_the_run(tmp_path):
    run_dir = tmp_path / "run"
    too_long = "t" * 80  # W&B refuses tags over 64 characters when the run starts
    proc = run_cli(
        "train", *smoke_overrides(run_dir, "logger=wandb", f"logger.tags=[{too_long}]"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "W&B failed to start" in proc.stderr + proc.stdout
    assert (run_dir / "eval.json").is_file() and "train/loss" in (run_dir / "metrics.jsonl").read_text()


def run_identity(run_dir: Path) -> tuple[str, str, str]:
    """(run id, group, display name) as the latest W&B session of `run_dir` recorded them."""
    run = next(r.run for r in read_records(offline_run(run_dir)) if r.HasField("run"))
    return run.run_id, run.run_group, run.display_name


def test_a_resumed_sweep_job_keeps_its_wandb_group_and_name(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-02" / "03-04-05"  # Hydra's multirun/<date>/<time>
    run_cli(
        "train",
        "-m",
        *smoke_overrides(tmp_path / "unused", "logger=wandb", "seed=0", f"hydra.sweep.dir={sweep}"),
        cwd=tmp_path,
        check=True,
    )
    job = sweep / "0"
    first = run_identity(job)
    # the group carries the sweep's date and time, so same-time sweeps on other days stay apart
    assert first[1:] == ("2026-01-02_03-04-05", "2026-01-02_03-04-05-0")
    run_cli("resume", str(job), "meta_iterations=6", cwd=tmp_path, check=True)
    assert run_identity(job) == first  # same run, same group, same name (not "0", no group)


def _connections_waiting(listener: socket.socket) -> int:
    """How many connections reached `listener` (never answered, they wait in its accept queue)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


def test_an_unreachable_wandb_server_costs_seconds_and_one_warning(tmp_path):
    """WANDB_MODE=online with a key but a server that never answers (a socket that accepts and stays
    silent, like a dead proxy): wandb.init alone would block about 90 s. The run waits
    logger.init_timeout, says so once, and logs to W&B offline instead; nothing dials the server
    again (W&B's teardown did, with WANDB_MODE=online left in the environment: about 10 s more)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections queue up and are never answered
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": url}
    started = time.monotonic()
    try:
        proc = run_cli(
            "train", *smoke_overrides(run_dir, "logger=wandb", "logger.init_timeout=2"), cwd=tmp_path, env=env
        )
        dialled = _connections_waiting(silent)
    finally:
        silent.close()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert output.count(f"W&B server {url} did not answer within 2 s (logger.init_timeout") == 1, output
    assert "W&B failed" not in output
    assert dialled == 1, f"the server was dialled {dialled} times: only the bounded probe may wait on it"
    assert elapsed < 60, f"took {elapsed:.0f} s: the wait for W&B was not bounded"  # unbounded: 90 s and more
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert offline_run(run_dir).name == f"run-{run_id}.wandb"  # the metrics are kept for `wandb sync`


class _Rejecting(BaseHTTPRequestHandler):
    """A W&B server that rejects every request's key: HTTP 401, as api.wandb.ai answers a bad key."""

    def _reject(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"errors":[{"message":"user is not logged in"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _reject

    def log_message(self, *args) -> None:  # keep the test's output clean
        pass


def test_a_server_that_rejects_the_key_gets_an_offline_run(tmp_path):
    """HTTP 401 from the server: the run says so once and logs to W&B offline, so `wandb sync` can
    upload it once the key is fixed (it used to log to metrics.jsonl only)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rejecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": url}
    try:
        proc = run_cli(
            "train", *smoke_overrides(run_dir, "logger=wandb", "logger.init_timeout=2"), cwd=tmp_path, env=env
        )
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    log_text = (run_dir / "mamlrun.log").read_text()
    assert log_text.count(f"W&B server {url} refused this run") == 1, log_text
    assert "W&B failed" not in log_text
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    records = read_records(offline_run(run_dir))
    assert offline_run(run_dir).name == f"run-{run_id}.wandb"
    logged = {
        i.key or "/".join(i.nested_key) for r in records if r.HasField("history") for i in r.history.item
    }
    assert "train/loss" in logged, sorted(logged)
