"""serving.encoder_batcher: a lone request goes at once; requests that arrive while a pass runs
share the next pass; errors and cancellations stay with their own callers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.encoder_batcher import EncoderBatcher


class GatedForward:
    """A forward pass that records each batch and, when gated, waits until the test opens it."""

    def __init__(self, gated: bool = False, fail_on: int | None = None):
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append([float(c[0, 0]) for c in crops])
        self.started.set()
        assert self.gate.wait(10)
        if self.fail_on is not None and self.fail_on in self.batches[-1]:
            raise RuntimeError("forward failed")
        ids = crops[:, 0, 0]
        return {"embeddings": np.stack([ids, ids * 2], axis=1), "probabilities": ids[:, None]}


def stack(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 4, 4), value, dtype=np.float32)


async def wait_for_thread(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the forward pass never started")


def test_a_lone_request_runs_at_once_and_gets_its_own_rows():
    async def main():
        forward = GatedForward()
        batcher = EncoderBatcher(forward, max_batch_size=16)
        out = await asyncio.wait_for(batcher.embed(stack(3.0, n=2)), 5)
        batcher.close()
        return forward, out

    forward, out = asyncio.run(main())
    assert forward.batches == [[3.0, 3.0]]
    assert out["embeddings"].tolist() == [[3.0, 6.0], [3.0, 6.0]]
    assert out["probabilities"].shape == (2, 1)


def test_requests_arriving_during_a_pass_share_the_next_one_up_to_max_batch_size():
    async def main():
        forward = GatedForward(gated=True)
        batcher = EncoderBatcher(forward, max_batch_size=3)
        first = asyncio.ensure_future(batcher.embed(stack(0.0)))
        await wait_for_thread(forward.started)  # pass 1 holds request 0 alone
        rest = [asyncio.ensure_future(batcher.embed(stack(float(i), n=i % 2 + 1))) for i in range(1, 6)]
        await asyncio.sleep(0.02)
        forward.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        batcher.close()
        return forward, batcher, results

    forward, batcher, results = asyncio.run(main())
    # request 0 alone; then requests 1-3 (each its crops together), then 4-5
    assert forward.batches == [[0.0], [1.0, 1.0, 2.0, 3.0, 3.0], [4.0, 5.0, 5.0]]
    assert batcher.passes == 3 and batcher.requests == 6
    for i, out in enumerate(results):  # every caller gets exactly its own rows back
        assert out["embeddings"][:, 0].tolist() == [float(i)] * (i % 2 + 1 if i else 1)


def test_a_failed_pass_fails_only_its_callers_and_the_next_pass_runs():
    async def main():
        forward = GatedForward(gated=True, fail_on=1.0)
        batcher = EncoderBatcher(forward, max_batch_size=1)
        calls = [asyncio.ensure_future(batcher.embed(stack(float(i)))) for i in range(3)]
        await wait_for_thread(forward.started)
        forward.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        batcher.close()
        return results

    ok0, failed, ok2 = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert ok0["embeddings"][0, 0] == 0.0 and ok2["embeddings"][0, 0] == 2.0


def test_a_caller_that_gave_up_is_left_out_of_the_next_pass():
    async def main():
        forward = GatedForward(gated=True)
        batcher = EncoderBatcher(forward, max_batch_size=8)
        first = asyncio.ensure_future(batcher.embed(stack(0.0)))
        await wait_for_thread(forward.started)
        gone = asyncio.ensure_future(batcher.embed(stack(1.0)))
        kept = asyncio.ensure_future(batcher.embed(stack(2.0)))
        await asyncio.sleep(0.01)
        gone.cancel()  # e.g. the request's timeout
        forward.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, kept), 5)
        batcher.close()
        return forward, results

    forward, (first, kept) = asyncio.run(main())
    assert forward.batches == [[0.0], [2.0]]
    assert kept["embeddings"][0, 0] == 2.0


def test_a_batch_wait_gathers_requests_that_arrive_soon_after_an_idle_start():
    async def main():
        forward = GatedForward()
        batcher = EncoderBatcher(forward, max_batch_size=8, batch_wait_s=0.2)
        first = asyncio.ensure_future(batcher.embed(stack(0.0)))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.embed(stack(1.0)))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        batcher.close()
        return forward

    assert asyncio.run(main()).batches == [[0.0, 1.0]]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        EncoderBatcher(GatedForward(), max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_s"):
        EncoderBatcher(GatedForward(), batch_wait_s=-1)


def test_a_pass_waits_for_announced_requests_still_decoding_but_not_longer_than_linger():
    async def main():
        forward = GatedForward()
        batcher = EncoderBatcher(forward, max_batch_size=8, linger_s=1.0)
        with batcher.arriving() as late:  # announced: its film is "decoding"
            first = asyncio.ensure_future(batcher.embed(stack(0.0)))
            await asyncio.sleep(0.05)  # the pass waits for the announced request...
            assert forward.batches == []
            second = await asyncio.wait_for(batcher.embed(stack(1.0), late), 5)  # ...which joins it
        await asyncio.wait_for(first, 5)
        assert forward.batches == [[0.0, 1.0]] and second["embeddings"][0, 0] == 1.0

        short = EncoderBatcher(forward, max_batch_size=8, linger_s=0.05)
        with short.arriving():  # announced, but never embeds: the pass goes after linger_s
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(short.embed(stack(2.0)), 5)
            waited = asyncio.get_running_loop().time() - started
        assert 0.04 <= waited < 1.0 and forward.batches[-1] == [2.0]

        alone = asyncio.get_running_loop().time()  # nobody announced: no wait at all
        await asyncio.wait_for(batcher.embed(stack(3.0)), 5)
        assert asyncio.get_running_loop().time() - alone < 0.5 and forward.batches[-1] == [3.0]
        for b in (batcher, short):
            b.close()

    asyncio.run(main())


def test_a_request_that_fails_before_embedding_stops_being_waited_for():
    async def main():
        forward = GatedForward()
        batcher = EncoderBatcher(forward, max_batch_size=8, linger_s=5.0)
        with pytest.raises(ValueError), batcher.arriving():  # e.g. its film did not decode
            raise ValueError("unreadable film")
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(batcher.embed(stack(0.0)), 6)  # nobody left to wait for
        batcher.close()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(main()) < 1.0
