"""The coalescer's guarantees, each against a producer the test steps by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from cascache.tiers.coalesce import Coalescer, FlightCancelled, Subscription

ITEMS = ["a", "b", "c", "d"]


class Boom(Exception):
    pass


class GatedProducer:
    """An upstream stand-in: each item, and the end, is produced only when the test releases it.

    Counts its starts and records how it ended, so a test can see whether the
    upstream call was shared, finished, or cancelled and cleaned up.
    """

    def __init__(
        self,
        items: list[str] = ITEMS,
        error: BaseException | None = None,
        slow_close: asyncio.Event | None = None,
    ) -> None:
        self.items = items
        self.error = error
        self.slow_close = slow_close  # if given, releasing the connection waits for it
        self.starts = 0
        self.produced = 0
        self.cancelled = False
        self.cleaned_up = asyncio.Event()  # set by the generator's finally: the connection is released
        self._permits = asyncio.Semaphore(0)

    def release(self, steps: int = 1) -> None:
        for _ in range(steps):
            self._permits.release()

    def open(self) -> None:
        """Let every item and the end through."""
        self.release(len(self.items) + 1)

    def start(self) -> AsyncIterator[str]:
        self.starts += 1
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                await self._permits.acquire()
                self.produced += 1
                yield item
            await self._permits.acquire()
            if self.error is not None:
                raise self.error
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            if self.slow_close is not None:
                # Bounded too: a failing test must not leave a task that blocks the loop's teardown.
                async with asyncio.timeout(5):
                    await self.slow_close.wait()
            self.cleaned_up.set()


@asynccontextmanager
async def scenario() -> AsyncIterator[None]:
    """Bound the scenario in time, so a bug fails the test instead of hanging it, and check it leaks no task."""
    before = asyncio.all_tasks()
    async with asyncio.timeout(5):
        yield
    leaked = asyncio.all_tasks() - before
    assert not leaked, f"tasks still running after the scenario: {leaked}"


async def collect(sub: Subscription[str]) -> list[str]:
    async with sub:
        return [item async for item in sub]


async def collect_until_error(sub: Subscription[str]) -> tuple[list[str], BaseException | None]:
    """Read to the end without closing first, then check that the end is final (an error is raised once)."""
    received: list[str] = []
    error: BaseException | None = None
    try:
        async for item in sub:
            received.append(item)
    except Exception as exc:  # noqa: BLE001 - the error is what the test inspects
        error = exc
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    await sub.aclose()
    return received, error


async def test_sixteen_identical_joins_start_the_producer_once_and_all_get_every_item() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        all_joined = asyncio.Event()
        joined: list[bool] = []

        async def client() -> tuple[bool, list[str]]:
            sub = coalescer.join("key", producer.start)
            joined.append(sub.leader)
            if len(joined) == 16:
                all_joined.set()
            return sub.leader, await collect(sub)

        clients = [asyncio.create_task(client()) for _ in range(16)]
        await all_joined.wait()
        producer.open()
        results = await asyncio.gather(*clients)

        assert producer.starts == 1
        assert [leader for leader, _ in results].count(True) == 1
        assert all(received == ITEMS for _, received in results)
        assert (coalescer.flights_started, coalescer.followers_joined) == (1, 15)
        assert coalescer.in_flight == 0


async def test_late_follower_gets_the_items_already_produced_then_the_live_ones() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        leader = coalescer.join("key", producer.start)
        producer.release(2)
        assert [await anext(leader), await anext(leader)] == ["a", "b"]

        follower = coalescer.join("key", producer.start)
        assert (leader.leader, follower.leader) == (True, False)
        follower_task = asyncio.create_task(collect(follower))
        producer.open()

        assert await collect(leader) == ["c", "d"]
        assert await follower_task == ITEMS
        assert producer.starts == 1


async def test_different_keys_never_merge() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        first, second = GatedProducer(["tenant-1"]), GatedProducer(["tenant-2"])
        # Same fingerprint, different scope: the key is a tuple, and the tuples differ.
        sub_1 = coalescer.join(("tenant-1", "fp"), first.start)
        sub_2 = coalescer.join(("tenant-2", "fp"), second.start)
        assert sub_1.leader and sub_2.leader
        assert coalescer.in_flight == 2
        first.open()
        second.open()
        assert await collect(sub_1) == ["tenant-1"]
        assert await collect(sub_2) == ["tenant-2"]
        assert (first.starts, second.starts, coalescer.followers_joined) == (1, 1, 0)


async def test_producer_error_reaches_every_subscriber_once_after_the_items_before_it() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        error = Boom("upstream broke")
        producer = GatedProducer(["a", "b"], error=error)
        leader = coalescer.join("key", producer.start)
        producer.release(1)
        assert await anext(leader) == "a"
        follower = coalescer.join("key", producer.start)
        tasks = [asyncio.create_task(collect_until_error(sub)) for sub in (leader, follower)]
        producer.open()

        (leader_items, leader_error), (follower_items, follower_error) = await asyncio.gather(*tasks)
        assert (leader_items, follower_items) == (["b"], ["a", "b"])
        assert leader_error is error and follower_error is error
        # The failure is not kept: the next caller starts a new upstream call.
        assert coalescer.in_flight == 0
        again = coalescer.join("key", producer.start)
        assert again.leader
        producer.open()
        assert await collect_until_error(again) == (["a", "b"], error)
        assert producer.starts == 2


async def test_start_raising_is_an_error_of_the_flight() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()

        def start() -> AsyncIterator[str]:
            raise Boom("no connection")

        leader = coalescer.join("key", start)
        follower = coalescer.join("key", start)
        for sub in (leader, follower):
            received, error = await collect_until_error(sub)
            assert received == [] and isinstance(error, Boom)


async def test_leader_leaving_early_does_not_stop_the_flight_for_followers() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        leader = coalescer.join("key", producer.start)
        follower = coalescer.join("key", producer.start)
        producer.release(1)
        assert await anext(leader) == "a"
        await leader.aclose()

        producer.open()
        assert await collect(follower) == ITEMS
        assert not producer.cancelled
        assert producer.starts == 1
        with pytest.raises(StopAsyncIteration):  # a closed subscription yields nothing more
            await anext(leader)


async def test_last_subscriber_leaving_cancels_the_producer_and_releases_the_key() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        leader = coalescer.join("key", producer.start)
        follower = coalescer.join("key", producer.start)
        producer.release(1)
        assert await anext(follower) == "a"

        await follower.aclose()
        assert not producer.cancelled  # the leader is still listening
        await leader.aclose()
        # aclose() of the last subscriber returns only once the producer is torn down.
        assert producer.cancelled and producer.cleaned_up.is_set()
        assert coalescer.in_flight == 0

        fresh = GatedProducer()
        again = coalescer.join("key", fresh.start)
        assert again.leader
        fresh.open()
        assert await collect(again) == ITEMS
        assert (producer.starts, fresh.starts, coalescer.flights_started) == (1, 1, 2)


async def test_leaving_before_the_producer_ran_never_starts_it() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        await coalescer.join("key", producer.start).aclose()
        assert producer.starts == 0
        assert coalescer.in_flight == 0


async def test_iterator_without_generator_semantics_is_closed_on_cancel() -> None:
    class Connection:
        """An async iterator object (not a generator) holding a resource that only `aclose` releases."""

        def __init__(self) -> None:
            self.closed = False

        def __aiter__(self) -> Connection:
            return self

        async def __anext__(self) -> str:
            await asyncio.Event().wait()  # never produces
            raise AssertionError

        async def aclose(self) -> None:
            self.closed = True

    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        connection = Connection()
        sub = coalescer.join("key", lambda: connection)
        await asyncio.sleep(0)  # let the producer start and block in __anext__
        await sub.aclose()
        assert connection.closed


async def test_cancelled_subscriber_task_leaves_like_a_close() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        sub = coalescer.join("key", producer.start)
        waiting = asyncio.create_task(anext(sub))
        await asyncio.sleep(0)  # let it block waiting for the first item
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        await producer.cleaned_up.wait()
        assert producer.cancelled
        assert coalescer.in_flight == 0
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
        await sub.aclose()  # closing again after leaving is harmless


async def test_cancelled_leader_task_leaves_the_flight_running_for_followers() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        leader = coalescer.join("key", producer.start)
        follower = coalescer.join("key", producer.start)
        leader_task = asyncio.create_task(collect(leader))
        await asyncio.sleep(0)
        leader_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader_task

        producer.open()
        assert await collect(follower) == ITEMS
        assert not producer.cancelled and producer.starts == 1


async def test_a_new_join_does_not_follow_a_flight_that_is_being_torn_down() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        connection_closed = asyncio.Event()
        dying = GatedProducer(slow_close=connection_closed)
        sub = coalescer.join("key", dying.start)
        waiting = asyncio.create_task(anext(sub))
        await asyncio.sleep(0)  # let it block waiting for the first item
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert dying.cancelled and not dying.cleaned_up.is_set()  # still releasing its connection

        fresh = GatedProducer()
        again = coalescer.join("key", fresh.start)
        assert again.leader
        fresh.open()
        assert await collect(again) == ITEMS
        connection_closed.set()
        await dying.cleaned_up.wait()


async def test_a_finished_flight_is_not_reused() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        first = coalescer.join("key", producer.start)
        producer.open()
        assert await collect(first) == ITEMS
        assert coalescer.in_flight == 0

        second = coalescer.join("key", producer.start)
        assert second.leader
        producer.open()
        assert await collect(second) == ITEMS
        assert producer.starts == 2
        assert (coalescer.flights_started, coalescer.followers_joined) == (2, 0)


async def test_items_stay_readable_after_the_flight_ended() -> None:
    """A slow reader still gets everything: the buffer outlives the flight until its readers are done."""
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        fast = coalescer.join("key", producer.start)
        slow = coalescer.join("key", producer.start)
        producer.open()
        assert await collect(fast) == ITEMS
        assert coalescer.in_flight == 0
        assert await collect(slow) == ITEMS


async def test_shutdown_cancels_producers_and_tells_remaining_subscribers() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        sub = coalescer.join("key", producer.start)
        producer.release(1)
        assert await anext(sub) == "a"
        await coalescer.aclose()
        assert producer.cancelled and producer.cleaned_up.is_set()
        received, error = await collect_until_error(sub)
        assert received == [] and isinstance(error, FlightCancelled)
        assert coalescer.in_flight == 0


async def test_shutdown_before_the_producer_ran_still_ends_the_flight() -> None:
    async with scenario():
        coalescer: Coalescer[str] = Coalescer()
        producer = GatedProducer()
        sub = coalescer.join("key", producer.start)
        await coalescer.aclose()
        assert producer.starts == 0
        received, error = await collect_until_error(sub)
        assert received == [] and isinstance(error, FlightCancelled)
        assert coalescer.in_flight == 0
