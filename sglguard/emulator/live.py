"""A stream that goes out while its request decodes in real time (`--decode-speed`), as SGLang
sends one: headers at once, events as tokens come, and an abort when the client hangs up."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

from .context import EmulatorContext
from .engine import Job, Outcome, run_job

# What a stream renders: the output so far (final=False) or the finished request (final=True).
Render = Callable[[Outcome, bool], Iterator[bytes]]


def live_stream(ctx: EmulatorContext, job: Job, render: Render) -> Iterator[bytes]:
    """Run `job` beside the stream and yield its events as it decodes. A stream closed before
    the request finished (the client hung up, a write failed) aborts the request, counted
    once, as SGLang's tokenizer manager does when the HTTP server cancels the stream."""
    updates: queue.SimpleQueue[tuple[Outcome | BaseException, bool]] = queue.SimpleQueue()

    def work() -> None:
        try:
            updates.put((run_job(ctx, progressing), True))
        except BaseException as exc:  # handed to the stream, which raises it
            updates.put((exc, True))

    progressing = replace(job, on_progress=lambda out: updates.put((out, False)))
    threading.Thread(target=work, daemon=True, name=f"stream-{job.rid[:8]}").start()
    finished = False
    try:
        while not finished:
            update, finished = updates.get()
            if isinstance(update, BaseException):
                raise update
            yield from render(update, finished)
    finally:
        if not finished:
            ctx.state.abort(job.rid)
