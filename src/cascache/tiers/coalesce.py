"""Tier 3a: identical requests already in flight share one upstream call.

This module knows nothing about HTTP, providers or caching: it merges
concurrent work by key and fans the produced items out to every listener.
The pipeline decides what a key is and what the items are (an upstream
reply's head, then its stream chunks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from types import TracebackType
from typing import Generic, Self, TypeVar

from cascache._errors import CascacheError

log = logging.getLogger(__name__)

T = TypeVar("T")


class FlightCancelled(CascacheError):
    """The shared producer stopped without an outcome (the coalescer was shut down) while listeners remained."""

    status_code = 503
    error_type = "upstream_cancelled"


class Coalescer(Generic[T]):
    """Runs each in-flight key's producer once and gives every caller for that key the same items.

    `join(key, start)`: the first caller for a key is the *leader*; `start()`
    is called once, in a background task owned by the coalescer, so the
    upstream call does not belong to any one client. Callers that join while
    that flight is in progress are *followers*. Every caller, leader included,
    gets its own `Subscription` and reads the flight through it.

    Guarantees
    - One start per flight: while a flight for a key is in progress, `join`
      never calls `start` again.
    - Same items, same order: every subscriber receives every item the
      producer yields, in order. A late follower first gets the items
      already produced (replay), then the live ones. Items are shared, not
      copied: make them immutable (bytes, frozen dataclasses).
    - Errors: if the producer raises, each subscriber gets that exception
      raised once, after the items it has received, and then its
      subscription is over. Nothing is raised twice to the same subscriber.
    - Leaving: a subscriber leaves by `aclose()` (or `async with` exit), or
      by having its task cancelled while it waits for the next item. The
      producer keeps running while anyone is subscribed (the leader leaving
      does not stop it); when the last subscriber leaves before the end, the
      producer task is cancelled and its iterator closed, which releases the
      upstream connection. Cancellation anywhere else in the subscriber's
      code is not seen here: use `async with` so the exit leaves.
    - A flight ends when its producer ends (returns, raises or is cancelled).
      The key is released at that moment: the next `join` starts a new
      flight. Results are not kept: caching them is the write-back's job, and
      a failure is never replayed to later callers.

    Limits
    - Merging is by exact key (`==` and `hash`), nothing else. Everything
      that changes the items must be in the key: the request fingerprint
      (which holds the scope, so tenants never share a flight) and whether
      the reply streams.
    - One process, one event loop, not thread-safe: all calls must come from
      the loop's thread. Replicas of the gateway do not merge with each other.
    - No backpressure: the producer runs at the upstream's pace, so a slow
      client never stalls the others. The price is memory: a flight's items
      are buffered from its start until it has ended *and* its last
      subscriber has read or closed (late joiners and slow readers need
      them). That is at most one whole response per flight, the same order
      as what the write-back assembles anyway. There is no cap on followers.
    - A subscription that is neither read to the end nor closed keeps its
      flight's producer alive until the producer ends by itself.

    `flights_started` and `followers_joined` count for metrics: the upstream
    calls made, and the upstream calls saved.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}
        # The event loop keeps only weak references to tasks; these keep the
        # producers alive, and let `aclose()` find them at shutdown.
        self._tasks: set[asyncio.Task[None]] = set()
        self.flights_started = 0
        self.followers_joined = 0

    @property
    def in_flight(self) -> int:
        """Keys with a flight in progress (that a `join` would follow)."""
        return len(self._flights)

    def join(self, key: Hashable, start: Callable[[], AsyncIterator[T]]) -> Subscription[T]:
        """Follow the flight in progress for `key`, or lead a new one that iterates `start()`.

        Synchronous on purpose: the check and the registration happen with no
        `await` between them, so two callers can never both become leaders.
        Must be called from a running event loop.
        """
        flight = self._flights.get(key)
        if flight is not None:
            flight.subscribers += 1
            self.followers_joined += 1
            return Subscription(self, flight, leader=False)
        flight = _Flight(key)
        self._flights[key] = flight
        self.flights_started += 1
        task = asyncio.get_running_loop().create_task(self._drive(flight, start), name="cascache-coalesce")
        flight.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._on_task_done(flight, done))
        return Subscription(self, flight, leader=True)

    async def aclose(self) -> None:
        """Shut down: cancel every producer and wait for it. Remaining subscribers get FlightCancelled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _drive(self, flight: _Flight[T], start: Callable[[], AsyncIterator[T]]) -> None:
        # Unless the producer returns or raises an Exception, the flight ended
        # by cancellation; that is the outcome left in place.
        outcome: BaseException | None = FlightCancelled("the shared upstream call was cancelled")
        iterator: AsyncIterator[T] | None = None
        try:
            iterator = start()
            async for item in iterator:
                flight.publish(item)
            outcome = None
        except Exception as exc:  # noqa: BLE001 - handed to every subscriber; the task itself ends cleanly
            outcome = exc
        finally:
            try:
                if iterator is not None:
                    await _close(iterator)
            finally:
                self._end(flight, outcome)

    def _end(self, flight: _Flight[T], outcome: BaseException | None) -> None:
        if flight.finished:
            return
        flight.finish(outcome)
        if self._flights.get(flight.key) is flight:  # a newer flight may hold the key already
            del self._flights[flight.key]

    def _on_task_done(self, flight: _Flight[T], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A task cancelled before its first step never runs `_drive`'s finally.
        self._end(flight, FlightCancelled("the shared upstream call was cancelled before it started"))

    def _leave(self, flight: _Flight[T]) -> asyncio.Task[None] | None:
        """Drop one subscriber; if it was the last and the flight is live, cancel the producer and return its task."""
        flight.subscribers -= 1
        if flight.subscribers > 0 or flight.finished:
            return None
        # Unregister now, not when the task has unwound, so that a new request
        # for this key starts a fresh flight instead of joining one being torn down.
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        assert flight.task is not None
        flight.task.cancel()
        return flight.task


class Subscription(Generic[T]):
    """One caller's view of a flight: an async iterator of the flight's items, from the first.

    Use it as `async with coalescer.join(...) as sub: async for item in sub: ...`
    so that leaving early is never forgotten.
    """

    __slots__ = ("_coalescer", "_flight", "_position", "leader")

    def __init__(self, coalescer: Coalescer[T], flight: _Flight[T], leader: bool) -> None:
        self.leader = leader
        """True for the caller whose `join` started the flight (the response is a miss, not coalesced)."""
        self._coalescer = coalescer
        self._flight: _Flight[T] | None = flight
        self._position = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        flight = self._flight
        while flight is not None:
            if self._position < len(flight.items):
                item = flight.items[self._position]
                self._position += 1
                return item
            if flight.finished:
                self._detach()
                if flight.error is not None:
                    raise flight.error.with_traceback(flight.error_traceback)
                break
            try:
                await flight.changed()
            except asyncio.CancelledError:
                # The client went away while waiting (an ASGI server cancels the
                # response task on disconnect): that is leaving.
                self._detach()
                raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Leave the flight; if this was the last subscriber, wait until the producer has been torn down."""
        task = self._detach()
        if task is not None:
            # Waiting means that once the last listener has closed, the upstream
            # connection is released; `asyncio.wait` does not re-raise the
            # producer's cancellation into this task.
            await asyncio.wait([task])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _detach(self) -> asyncio.Task[None] | None:
        flight, self._flight = self._flight, None  # also lets the item buffer go once every reader is done
        if flight is None:
            return None
        return self._coalescer._leave(flight)


class _Flight(Generic[T]):
    """The shared state of one producer run: its items so far, its outcome, who is still listening."""

    __slots__ = ("_changed", "error", "error_traceback", "finished", "items", "key", "subscribers", "task")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.items: list[T] = []
        self.subscribers = 1  # the leader
        self.finished = False
        self.error: BaseException | None = None
        self.error_traceback: TracebackType | None = None
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def publish(self, item: T) -> None:
        self.items.append(item)
        self._wake()

    def finish(self, error: BaseException | None) -> None:
        self.finished = True
        self.error = error
        # Kept apart from the exception, because re-raising it in each
        # subscriber would otherwise grow one traceback across all of them.
        self.error_traceback = error.__traceback__ if error is not None else None
        self._wake()

    async def changed(self) -> None:
        """Wait until an item is published or the flight finishes."""
        await self._changed.wait()

    def _wake(self) -> None:
        # A fresh event per change: waking everyone who waited on the old one,
        # with no reset that a slow waiter could miss.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


async def _close(iterator: AsyncIterator[object]) -> None:
    """Close the producer's iterator (an async generator, or anything with `aclose`); never raises an Exception."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        # Every item has been handed out already; a failing close cannot change
        # what the subscribers got, so it is logged rather than given to them.
        log.warning("closing a coalesced producer failed", exc_info=True)
