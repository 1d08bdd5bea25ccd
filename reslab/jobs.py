"""Several independent runs at once, each in a process of its own, sharing the machine's device.

A small model trained with batch 128 leaves a GPU mostly idle (each step is a few dozen tiny kernels, and
Python launches them one by one), so a study's runs finish sooner side by side than one after another.
Each run gets a fresh spawned process: nothing of CUDA or of another run leaks in, and a process that ends
gives its memory back. Ctrl-C and SIGTERM reach every process of the group: a run in training stops after
its batch as it would alone, and no new run starts.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

from .errors import ReslabError


class _Labelled:
    """A text stream that starts every line with a label, so the lines of runs side by side stay readable."""

    def __init__(self, stream: Any, label: str):
        self.stream, self.label, self.pending = stream, label, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        if lines:
            self.stream.write("".join(f"{self.label}{line}\n" for line in lines))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close_line(self) -> None:
        """Write out a last line that never got its newline."""
        if self.pending:
            self.write("\n")

    def isatty(self) -> bool:
        return False   # no progress bars: several would draw over each other


def _child(fn: Callable[..., Any], args: tuple, label: str, threads: int, conn: Any) -> None:
    """Run fn(*args) in a worker process and send ("ok", result) or ("error", exception) back."""
    sys.stdout = _Labelled(sys.__stdout__, f"[{label}] ")
    sys.stderr = _Labelled(sys.__stderr__, f"[{label}] ")
    import torch
    torch.set_num_threads(threads)   # the CPU's cores are shared out; a run's own `threads` setting still wins
    try:
        conn.send(("ok", fn(*args)))
    except ReslabError as exc:
        conn.send(("error", exc))
    except KeyboardInterrupt:
        conn.send(("error", KeyboardInterrupt()))
    except BaseException as exc:   # a bug: show where, then let the parent stop the study
        traceback.print_exc()
        conn.send(("error", RuntimeError(f"run {label} failed: {type(exc).__name__}: {exc}")))
    finally:
        sys.stdout.close_line()
        sys.stderr.close_line()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_parallel(fn: Callable[..., Any], tasks: Sequence[tuple[str, tuple]], jobs: int) -> list[Any]:
    """fn(*args) for every (label, args) task, at most `jobs` at a time, each in a new process; results in order.

    The first error stops new runs from starting; the runs under way finish, then the error is raised.
    """
    if jobs < 1:
        raise ReslabError(f"jobs must be at least 1, got {jobs}")
    context = multiprocessing.get_context("spawn")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // min(jobs, len(tasks) or 1))
    results: list[Any] = [None] * len(tasks)
    queue = list(enumerate(tasks))
    running: dict[Any, tuple[int, Any, str]] = {}
    failure: BaseException | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        while queue or running:
            while queue and len(running) < jobs and failure is None:
                index, (label, args) = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(fn, args, label, threads, send), name=label)
                process.start()
                send.close()
                running[receive] = (index, process, label)
                print(f"started {label} ({len(running)} running, {len(queue)} waiting)", flush=True)
            if not running:
                break
            try:
                ready = wait(list(running))
            except KeyboardInterrupt as exc:
                # The children had the signal too: those in training stop after their batch. Start no more.
                failure = failure or exc
                queue.clear()
                print(f"interrupted: waiting for {len(running)} run(s) to stop (Ctrl-C again to quit at once)",
                      flush=True)
                continue
            for conn in ready:
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
                elif failure is None:
                    failure = value
                    if running:
                        print(f"{label} failed; waiting for {len(running)} run(s) under way", flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failure is not None:
        raise failure
    return results


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
