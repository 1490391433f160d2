"""Server-sent events from a generation that runs in a thread of its own.

An answer holds the model's lock from its first token to its last (one edit set per answer), and a
lock belongs to the thread that took it, so the whole iteration happens in one worker thread; the
event loop only relays what it produces. A client that goes away stops the worker at its next token.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")

DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def in_own_thread(items: Iterator[T]) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def hand(kind: str, value=None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            gone.set()

    def work() -> None:
        try:
            for item in items:
                if gone.is_set():
                    break
                hand("item", item)
        except Exception as exc:  # handed to the response, which reports it in the stream
            hand("error", exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # in this thread: it releases the locks this thread holds
            hand("end")

    threading.Thread(target=work, name="editserve-stream", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        gone.set()
