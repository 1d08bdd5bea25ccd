"""Several independent runs at once, each in a process of its own, sharing the machine's device.

A small model trained with batch 128 leaves a GPU mostly idle (each step is a few dozen tiny kernels, and
Python launches them one by one), so a study's runs finish sooner side by side than one after another.
Each run gets a fresh spawned process: nothing of CUDA or of another run leaks in, and a process that ends
gives its memory back. Each child has a process group of its own, and the parent passes every SIGINT and
SIGTERM it gets on to the children: Ctrl-C in a terminal, `kill PID` and `timeout` act alike, a run in
training stops after its batch as it would alone (a second signal stops it at once), and no new run starts.
A child whose parent dies (`kill -9`, a crash) stops the same way by itself: nothing is left training unseen.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from .errors import ReslabError

# How often a child looks whether its parent is still there.
PARENT_POLL_SECONDS = 0.5


class _Labelled:
    """A text stream that starts every line with a label, so the lines of runs side by side stay readable."""

    def __init__(self, stream: Any, label: str):
        self.stream, self.label, self.pending = stream, label, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        if any(lines):
            self.stream.write("".join(f"{self.label}{line}\n" for line in lines if line))
            self.stream.flush()
        return len(text)

    def close_line(self) -> None:
        """Write out a last line that never got its newline."""
        if self.pending:
            self.write("\n")

    def isatty(self) -> bool:
        return False   # no progress bars: several would draw over each other

    def __getattr__(self, name: str) -> Any:   # flush, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)


def _child(fn: Callable[..., Any], args: tuple, label: str, threads: int, conn: Any, parent: int) -> None:
    """Run fn(*args) in a worker process and send ("ok", result) or ("error", exception) back."""
    os.setpgid(0, 0)   # signals from the terminal go to the parent alone, which passes each on exactly once
    _stop_with(parent)
    sys.stdout = _Labelled(sys.__stdout__, f"[{label}] ")
    sys.stderr = _Labelled(sys.__stderr__, f"[{label}] ")
    import torch
    torch.set_num_threads(threads)   # the CPU's cores are shared out; a run's own `threads` setting still wins
    try:
        message = ("ok", fn(*args))
    except (ReslabError, OSError) as exc:   # a user's mistake or a full disk (named by the run's writes): one line
        message = ("error", exc)
    except KeyboardInterrupt:
        message = ("error", KeyboardInterrupt())
    except BaseException as exc:   # a bug: show where, then let the parent stop the study
        traceback.print_exc()
        message = ("error", RuntimeError(f"run {label} failed: {type(exc).__name__}: {exc}"))
    finally:
        sys.stdout.close_line()
        sys.stderr.close_line()
    with contextlib.suppress(OSError):   # a parent that died listens no more; the run's files say how it ended
        conn.send(message)


def _stop_with(parent: int) -> None:
    """Stop this run politely, as SIGTERM does (after its batch, with last.pth and an interrupted summary), once
    the parent process is gone: orphans would train on unseen and hold their run folders' locks."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def run_parallel(fn: Callable[..., Any], tasks: Sequence[tuple[str, tuple]], jobs: int) -> list[Any]:
    """fn(*args) for every (label, args) task, at most `jobs` at a time, each in a new process; results in order.

    The first error, or a SIGINT/SIGTERM, stops new runs from starting; the runs under way end (a signal is
    passed on to them), then the error is raised (KeyboardInterrupt for a signal).
    """
    if jobs < 1:
        raise ReslabError(f"jobs must be at least 1, got {jobs}")
    context = multiprocessing.get_context("spawn")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // min(jobs, len(tasks) or 1))
    results: list[Any] = [None] * len(tasks)
    queue = list(enumerate(tasks))
    running: dict[Any, tuple[int, Any, str]] = {}
    failure: list[BaseException] = []

    def pass_on(signum: int, frame: Any) -> None:
        if not failure:
            failure.append(KeyboardInterrupt())
            with contextlib.suppress(RuntimeError):   # the main loop may be printing: skip the line, not the stop
                print(f"interrupted: stopping {len(running)} run(s) after their batch (again to stop at once)",
                      flush=True)
        queue.clear()
        for _, process, _ in running.values():
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while queue or running:
            while queue and len(running) < jobs and not failure:
                index, (label, args) = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(fn, args, label, threads, send, os.getpid()),
                                          name=label)
                process.start()
                send.close()
                running[receive] = (index, process, label)
                print(f"started {label} ({len(running)} running, {len(queue)} waiting)", flush=True)
            if not running:
                break
            for conn in cast(list[Connection], wait(list(running))):   # our pipes' ends: connections
                index, process, label = running.pop(conn)
                try:
                    status, value = conn.recv()
                except EOFError:
                    status, value = "error", ReslabError(f"run {label} ended without a result "
                                                         f"(exit code {process.exitcode})")
                process.join()
                conn.close()
                if status == "ok":
                    results[index] = value
                    print(f"finished {label}", flush=True)
                elif not failure:
                    failure.append(value)
                    if running:
                        print(f"{label} failed; waiting for {len(running)} run(s) under way", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if failure:
        raise failure[0]
    return results
