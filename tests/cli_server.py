"""A fork server for the real `mamlrun` command line: one process imports what every command imports
(torch, Hydra, mamlrun: about 2 of the 2.7 s a bare `python -m mamlrun` takes), then forks a fresh
child for each command. The child is a process of its own: its own working directory, environment,
stdin (/dev/null), stdout and stderr (files the client reads back) and exit code, and it runs the
same entry point as `python -m mamlrun` (`mamlrun.entry.main`) and ends as the interpreter would: an
uncaught exception prints its traceback and exits 1, atexit handlers run.

For the table-driven tests that run the CLI many times on input it must refuse. Nothing in the
server runs a torch operation before forking, so no thread pool is forked half-alive.

Protocol: one JSON request per line on stdin ({args, cwd, env, stdout, stderr, timeout}); one JSON
reply per line on stdout ({returncode, timed_out}).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
import traceback

import mamlrun.cli
import mamlrun.entry
import mamlrun.run

MAIN = os.path.join(os.path.dirname(mamlrun.entry.__file__), "__main__.py")


def exit_code(exc: SystemExit) -> int:
    """The status the interpreter gives `raise SystemExit(code)`; a message goes to stderr."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_child(request: dict) -> None:
    """In the forked child: become the command's process, run the CLI, exit. Never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = [MAIN, *request["args"]]
        try:
            mamlrun.entry.main()
            code = 0
        except SystemExit as exc:
            code = exit_code(exc)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def wait(pid: int, timeout: float) -> tuple[int, bool]:
    """The child's return code as subprocess reports it (-N for signal N), and whether it timed out."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL, True
        time.sleep(0.01)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        returncode, timed_out = wait(pid, request["timeout"])
        print(json.dumps({"returncode": returncode, "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
    serve()
