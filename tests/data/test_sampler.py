from collections import Counter

import pytest

from persona.data.sampler import BalancedSampler, balanced_sequence

NUM_GENERATED = 99
INPUT_ROWS = [0]
GENERATED_ROWS = list(range(1, NUM_GENERATED + 1))
DRAWS = 10_000


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.0])
def test_input_share_over_10000_draws(ratio: float):
    sampler = BalancedSampler(INPUT_ROWS, GENERATED_ROWS, ratio, epoch_length=DRAWS, seed=3)
    draws = list(sampler)
    assert len(draws) == DRAWS
    share = draws.count(0) / DRAWS
    expected = ratio if ratio > 0 else 1.0 / (NUM_GENERATED + 1)
    assert abs(share - expected) < 0.01
    # generated frames are drawn uniformly: counts differ by at most one
    counts = Counter(d for d in draws if d != 0)
    assert set(counts) == set(GENERATED_ROWS)
    if ratio > 0:
        assert max(counts.values()) - min(counts.values()) <= 1


def test_ratio_zero_draws_input_as_one_frame_among_all():
    counts = Counter(balanced_sequence(INPUT_ROWS, GENERATED_ROWS, 0.0, 1000, 0, 0))
    assert set(counts.values()) == {10}


def test_default_epoch_length_is_twice_the_generated_frames():
    sampler = BalancedSampler(INPUT_ROWS, GENERATED_ROWS)
    assert len(sampler) == 2 * NUM_GENERATED
    draws = list(sampler)
    assert draws.count(0) == NUM_GENERATED  # 1:1
    assert sorted(d for d in draws if d) == GENERATED_ROWS  # each generated frame once


def test_reproducible_with_seed_and_epoch():
    a = BalancedSampler(INPUT_ROWS, GENERATED_ROWS, seed=7)
    b = BalancedSampler(INPUT_ROWS, GENERATED_ROWS, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    c = BalancedSampler(INPUT_ROWS, GENERATED_ROWS, seed=8)
    assert list(c) != list(BalancedSampler(INPUT_ROWS, GENERATED_ROWS, seed=7))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_global_sequence(world: int):
    length = 301
    single = BalancedSampler(INPUT_ROWS, GENERATED_ROWS, 0.5, length, seed=1,
                             num_replicas=world, rank=0)
    shards = [list(BalancedSampler(INPUT_ROWS, GENERATED_ROWS, 0.5, length, seed=1,
                                   num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-length // world)
    union = [x for r in range(world) for x in shards[r]]
    assert Counter(union) == Counter(single.global_sequence())
    # no duplicates beyond the ratio: generated frames drawn at most ceil(share) times
    generated_counts = Counter(x for x in union if x != 0)
    assert max(generated_counts.values()) - min(generated_counts.values()) <= 1
    # shards are disjoint slices of the sequence, not copies
    assert shards[0] != shards[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_ratio"):
        BalancedSampler(INPUT_ROWS, GENERATED_ROWS, 1.5)
    with pytest.raises(ValueError, match="no generated"):
        BalancedSampler(INPUT_ROWS, [], 0.5)
    with pytest.raises(ValueError, match="rank"):
        BalancedSampler(INPUT_ROWS, GENERATED_ROWS, num_replicas=2, rank=2)
