"""BlockManager accounting: can_allocate/allocate/free, all-or-nothing allocation, fits_ever."""

from __future__ import annotations

import random

import pytest

from unifiedserve.block_manager import BlockManager
from unifiedserve.request import Request
from unifiedserve.sampling_params import SamplingParams


def _req(rid: str = "r", num_prompt: int = 1) -> Request:
    return Request(rid, [0] * num_prompt, SamplingParams())


def test_rejects_an_empty_pool() -> None:
    with pytest.raises(ValueError, match="no blocks"):
        BlockManager(0, 16)


def test_blocks_for_rounds_up() -> None:
    bm = BlockManager(10, 4)
    assert [bm.blocks_for(n) for n in (0, 1, 3, 4, 5, 8, 9)] == [0, 1, 1, 1, 2, 2, 3]


def test_allocate_counts_from_computed_tokens_and_existing_blocks() -> None:
    bm = BlockManager(10, 4)
    req = _req()
    assert bm.num_new_blocks(req, 5) == 2
    assert bm.can_allocate(req, 5) and bm.allocate(req, 5)
    assert len(req.block_ids) == 2 and bm.num_free_blocks == 8
    req.num_computed_tokens = 5
    assert bm.num_new_blocks(req, 3) == 0  # 8 tokens still fit 2 blocks
    assert bm.allocate(req, 3) and len(req.block_ids) == 2
    req.num_computed_tokens = 8
    assert bm.num_new_blocks(req, 1) == 1
    assert bm.allocate(req, 1) and len(req.block_ids) == 3
    assert bm.usage == pytest.approx(0.3)


def test_allocate_that_does_not_fit_takes_nothing() -> None:
    bm = BlockManager(4, 4)
    a, b = _req("a"), _req("b")
    assert bm.allocate(a, 12)  # 3 blocks
    before = list(b.block_ids), bm.num_free_blocks
    assert not bm.can_allocate(b, 5)
    assert bm.allocate(b, 5) is False
    assert (list(b.block_ids), bm.num_free_blocks) == before
    assert bm.can_allocate(b, 4) and bm.allocate(b, 4)
    assert bm.num_free_blocks == 0
    assert bm.allocate(b, 0)  # nothing needed always fits


def test_free_returns_every_block_and_is_idempotent() -> None:
    bm = BlockManager(6, 2)
    a, b = _req("a"), _req("b")
    bm.allocate(a, 5)
    bm.allocate(b, 6)
    assert set(a.block_ids).isdisjoint(b.block_ids)
    bm.free(a)
    assert a.block_ids == [] and bm.num_free_blocks == 3
    bm.free(a)  # a second free gives nothing back twice
    assert bm.num_free_blocks == 3
    bm.free(b)
    assert bm.num_free_blocks == 6 and sorted(bm._free) == list(range(6))


def test_fits_ever() -> None:
    bm = BlockManager(3, 4)
    assert bm.fits_ever(12) and not bm.fits_ever(13) and bm.fits_ever(0)


def test_random_allocate_free_never_leaks_or_double_owns() -> None:
    rng = random.Random(0)
    for trial in range(50):
        bm = BlockManager(rng.randint(1, 40), rng.choice([1, 2, 4, 16]))
        reqs = [_req(f"r{i}") for i in range(6)]
        for _ in range(200):
            req = rng.choice(reqs)
            if rng.random() < 0.2:
                bm.free(req)
                req.num_computed_tokens = 0
                continue
            n = rng.randint(0, 20)
            need = bm.num_new_blocks(req, n)
            free_before = bm.num_free_blocks
            ok = bm.allocate(req, n)
            assert ok == (need <= free_before), trial
            if ok:
                assert bm.num_free_blocks == free_before - need
                req.num_computed_tokens += n
                assert len(req.block_ids) == bm.blocks_for(req.num_computed_tokens)
            else:
                assert bm.num_free_blocks == free_before
            owned = [b for r in reqs for b in r.block_ids]
            assert len(owned) == len(set(owned))
            assert sorted(owned + list(bm._free)) == list(range(bm.num_blocks))
