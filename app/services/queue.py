"""Admission of generations: at most `size` may wait for their first token (a place in the model's
running batch, or the model itself for an answer that runs alone); one more is refused at once (503
with Retry-After) rather than left to wait without bound. Counted in the metrics as waiting (until its
first token) and running, with the tokens it makes."""

from __future__ import annotations

import threading
import weakref

from app.core.observability import Metrics
from editors.text_stream import Answer, End


class Busy(Exception):
    pass


class GenerationQueue:
    def __init__(self, size: int, metrics: Metrics):
        self.size, self.metrics = size, metrics
        self.waiting = 0
        self.lock = threading.Lock()

    def admit(self, items: Answer) -> Answer:
        """`items`, once admitted; raises Busy when `size` generations already wait."""
        with self.lock:
            if self.waiting >= self.size:
                raise Busy(f"busy: {self.waiting} generations are waiting for the model; retry shortly")
            self.waiting += 1
        self.metrics.waiting.inc()
        place = _Place(self)
        counted = self._counted(items, place)
        # An answer that is never started (its client went away first) gives its place back when dropped.
        weakref.finalize(counted, place.leave)
        return counted

    def _counted(self, items: Answer, place: _Place) -> Answer:
        running = False
        try:
            for item in items:
                if not running:
                    place.leave()
                    self.metrics.running.inc()
                    running = True
                if isinstance(item, End):
                    self.metrics.tokens.inc(item.completion_tokens)
                yield item
        finally:
            place.leave()
            if running:
                self.metrics.running.dec()
            items.close()


class _Place:
    def __init__(self, queue: GenerationQueue):
        self.queue, self.left = queue, False

    def leave(self) -> None:
        with self.queue.lock:
            if self.left:
                return
            self.left = True
            self.queue.waiting -= 1
        self.queue.metrics.waiting.dec()
