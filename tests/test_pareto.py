import itertools
import math

import numpy as np
import pytest

from nas_attn.pareto import (
    crowding_distance,
    dominates,
    hypervolume,
    hypervolume_history,
    non_dominated,
    non_dominated_sort,
    validate_directions,
)

MIN2 = ["minimize", "minimize"]


# ---------- brute-force references, written from the definitions ----------

def _to_min(points, directions):
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(points, dtype=float).reshape(-1, len(directions)) * signs


def _brute_dominates(a, b):
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _brute_fronts(points_min):
    remaining = list(range(len(points_min)))
    fronts = []
    while remaining:
        front = [
            i for i in remaining
            if not any(_brute_dominates(points_min[j], points_min[i]) for j in remaining)
        ]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def _grid_hypervolume(points, directions, reference):
    """Exact union volume by coordinate compression.

    Every distinct coordinate (and the reference) cuts each axis; inside one grid cell
    the dominated/not-dominated status is constant, and a cell is dominated exactly
    when some point is <= its lower corner in every (minimised) coordinate.
    """
    points_min = _to_min(points, directions)
    ref = _to_min([reference], directions)[0]
    points_min = points_min[(points_min < ref).all(axis=1)]
    if len(points_min) == 0:
        return 0.0
    cuts = [np.unique(np.append(points_min[:, k], ref[k])) for k in range(len(ref))]
    lowers = np.stack(np.meshgrid(*[c[:-1] for c in cuts], indexing="ij"), axis=-1)
    widths = np.stack(np.meshgrid(*[np.diff(c) for c in cuts], indexing="ij"), axis=-1)
    lowers = lowers.reshape(-1, len(ref))
    cell_volume = widths.reshape(-1, len(ref)).prod(axis=1)
    covered = (points_min[None, :, :] <= lowers[:, None, :]).all(axis=2).any(axis=1)
    return float(cell_volume[covered].sum())


# ---------- directions ----------

def test_validate_directions_accepts_both_names():
    assert validate_directions(["maximize", "minimize"]) == ("maximize", "minimize")


@pytest.mark.parametrize("bad", [["max", "minimize"], ["minimise"], [None]])
def test_validate_directions_names_bad_value(bad):
    with pytest.raises(ValueError) as info:
        validate_directions(bad)
    assert repr([d for d in bad if d not in ("maximize", "minimize")][0]) in str(info.value)


def test_validate_directions_rejects_bare_string_and_empty():
    with pytest.raises(ValueError, match="single string"):
        validate_directions("maximize")
    with pytest.raises(ValueError, match="at least one"):
        validate_directions([])


def test_bad_direction_propagates_from_every_function():
    for call in (
        lambda: dominates([1], [2], ["up"]),
        lambda: non_dominated([[1]], ["up"]),
        lambda: non_dominated_sort([[1]], ["up"]),
        lambda: crowding_distance([[1]], [0], ["up"]),
        lambda: hypervolume([[1]], ["up"], [2]),
        lambda: hypervolume_history([[1]], ["up"], [2]),
    ):
        with pytest.raises(ValueError, match="'up'"):
            call()


# ---------- dominance ----------

def test_dominates_minimize():
    assert dominates([1, 2], [2, 2], MIN2)
    assert dominates([1, 1], [2, 2], MIN2)
    assert not dominates([2, 2], [1, 2], MIN2)
    assert not dominates([1, 3], [2, 2], MIN2)  # trade-off
    assert not dominates([1, 2], [1, 2], MIN2)  # equal vectors


def test_dominates_mixed_directions():
    directions = ["maximize", "minimize"]  # accuracy up, MACs down
    assert dominates([0.9, 100], [0.8, 100], directions)
    assert dominates([0.9, 50], [0.8, 100], directions)
    assert not dominates([0.8, 50], [0.9, 100], directions)
    assert not dominates([0.8, 100], [0.9, 100], directions)


def test_dominates_rejects_wrong_length_and_nan():
    with pytest.raises(ValueError, match="length 2"):
        dominates([1, 2, 3], [1, 2], MIN2)
    with pytest.raises(ValueError, match="finite"):
        dominates([1, float("nan")], [1, 2], MIN2)


# ---------- non-dominated set and sorting ----------

def test_non_dominated_hand_case():
    points = [[1, 5], [2, 2], [5, 1], [3, 3], [6, 6], [2, 4]]
    assert non_dominated(points, MIN2) == [0, 1, 2]


def test_non_dominated_keeps_duplicates():
    points = [[1, 2], [2, 1], [1, 2], [3, 3]]
    assert non_dominated(points, MIN2) == [0, 1, 2]


def test_non_dominated_maximize():
    points = [[0.9, 10], [0.95, 20], [0.8, 30], [0.95, 5]]
    # (0.95, 5) ties (0.95, 20) on accuracy and loses on the second maximised column.
    assert non_dominated(points, ["maximize", "maximize"]) == [1, 2]
    assert non_dominated(points, ["maximize", "minimize"]) == [3]


def test_empty_sets():
    assert non_dominated([], MIN2) == []
    assert non_dominated_sort([], MIN2) == []
    assert crowding_distance([], [], MIN2) == []
    assert hypervolume([], MIN2, [1, 1]) == 0.0
    assert hypervolume_history([], MIN2, [1, 1]) == []


def test_points_shape_is_checked():
    with pytest.raises(ValueError, match=r"shape \(n_points, 2\)"):
        non_dominated([[1, 2, 3]], MIN2)
    with pytest.raises(ValueError, match="finite"):
        non_dominated([[1, np.inf]], MIN2)


def test_non_dominated_sort_hand_case():
    points = [[1, 5], [2, 2], [5, 1], [3, 3], [6, 6], [2, 4], [3, 3]]
    assert non_dominated_sort(points, MIN2) == [[0, 1, 2], [3, 5, 6], [4]]


def test_single_objective_sort_groups_ties():
    points = [[0.5], [0.9], [0.5], [0.7]]
    assert non_dominated_sort(points, ["maximize"]) == [[1], [3], [0, 2]]


@pytest.mark.parametrize("seed,n,m", [(0, 40, 2), (1, 40, 3), (2, 30, 4), (3, 60, 2)])
def test_non_dominated_sort_matches_brute_force(seed, n, m):
    rng = np.random.default_rng(seed)
    # Rounded values so that ties and duplicates actually occur.
    points = np.round(rng.random((n, m)), 1)
    directions = [("maximize", "minimize")[k % 2] for k in range(m)]
    expected = _brute_fronts(_to_min(points, directions).tolist())
    fronts = non_dominated_sort(points, directions)
    assert fronts == expected
    assert non_dominated(points, directions) == expected[0]
    assert sorted(itertools.chain.from_iterable(fronts)) == list(range(n))


# ---------- crowding distance ----------

def test_crowding_distance_hand_case_2d():
    # Front along x + y = 4: ranges are 4 in both objectives.
    points = [[0, 4], [1, 3], [3, 1], [4, 0]]
    distance = crowding_distance(points, [0, 1, 2, 3], MIN2)
    assert distance[0] == math.inf and distance[3] == math.inf
    # Point 1: x neighbours 0 and 3 -> 3/4; y neighbours 4 and 1 -> 3/4.
    assert distance[1] == pytest.approx(1.5)
    assert distance[2] == pytest.approx(1.5)


def test_crowding_distance_follows_front_indices_order_and_subset():
    points = [[9, 9], [4, 0], [0, 4], [1, 3], [2, 2.5]]
    distance = crowding_distance(points, [3, 1, 2, 4], MIN2)
    # x: 0,1,2,4 (range 4); y: 0,2.5,3,4 (range 4)
    assert distance[1] == math.inf and distance[2] == math.inf
    assert distance[0] == pytest.approx((2 - 0) / 4 + (4 - 2.5) / 4)
    assert distance[3] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)


def test_crowding_distance_does_not_depend_on_direction_or_order():
    rng = np.random.default_rng(5)
    points = rng.random((8, 3))
    indices = [0, 2, 4, 6, 7]
    base = crowding_distance(points, indices, ["minimize"] * 3)
    flipped = crowding_distance(points, indices, ["maximize", "minimize", "maximize"])
    assert base == flipped
    reordered = crowding_distance(points, indices[::-1], ["minimize"] * 3)
    assert reordered == base[::-1]


def test_crowding_distance_single_point_and_identical_points_are_infinite():
    assert crowding_distance([[1, 2]], [0], MIN2) == [math.inf]
    assert crowding_distance([[1, 2], [1, 2], [1, 2]], [0, 1, 2], MIN2) == [math.inf] * 3


def test_crowding_distance_duplicates_get_equal_distances():
    points = [[0, 4], [2, 2], [2, 2], [4, 0]]
    distance = crowding_distance(points, [0, 1, 2, 3], MIN2)
    assert distance[1] == distance[2] == pytest.approx(2.0)
    assert distance[0] == distance[3] == math.inf


def test_crowding_distance_constant_objective_adds_nothing():
    # Objective 0 constant: only objective 1 (range 4) spreads the points.
    points = [[1, 0], [1, 1], [1, 3], [1, 4]]
    distance = crowding_distance(points, [0, 1, 2, 3], MIN2)
    assert distance == [math.inf, pytest.approx(0.75), pytest.approx(0.75), math.inf]


def test_crowding_distance_single_objective():
    distance = crowding_distance([[0.1], [0.5], [0.2], [0.9]], [0, 1, 2, 3], ["maximize"])
    # sorted 0.1, 0.2, 0.5, 0.9 (range 0.8)
    assert distance[0] == math.inf and distance[3] == math.inf
    assert distance[2] == pytest.approx((0.5 - 0.1) / 0.8)
    assert distance[1] == pytest.approx((0.9 - 0.2) / 0.8)


def test_crowding_distance_rejects_bad_indices():
    with pytest.raises(ValueError, match=r"front_indices\[1\].*\[0, 1\].*got 2"):
        crowding_distance([[0, 1], [1, 0]], [0, 2], MIN2)
    with pytest.raises(ValueError, match="integer"):
        crowding_distance([[0, 1], [1, 0]], [0.5], MIN2)


# ---------- hypervolume ----------

def test_hypervolume_2d_hand_case():
    # Union of [1,3]x[2,3] and [2,3]x[1,3]: 2 + 2 - 1 = 3.
    assert hypervolume([[1, 2], [2, 1]], MIN2, [3, 3]) == pytest.approx(3.0)


def test_hypervolume_mixed_directions_hand_case():
    # accuracy (max) above 0.5, MACs (min) below 200:
    # (0.9,100): 0.4 x 100 = 40; (0.8, 50): 0.3 x 150 = 45; overlap 0.3 x 100 = 30.
    volume = hypervolume([[0.9, 100], [0.8, 50]], ["maximize", "minimize"], [0.5, 200])
    assert volume == pytest.approx(55.0)


def test_hypervolume_3d_hand_cases():
    directions = ["minimize"] * 3
    assert hypervolume([[0, 0, 0]], directions, [1, 2, 3]) == pytest.approx(6.0)
    # Boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] -> 2 + 2 - 1 = 3;
    # plus [0,1]x[0,1]x[0,2] -> inclusion-exclusion: 2+2+2 -1-1-1 +1 = 4.
    assert hypervolume([[0, 1, 1], [1, 0, 1]], directions, [2, 2, 2]) == pytest.approx(3.0)
    assert hypervolume([[0, 1, 1], [1, 0, 1], [1, 1, 0]], directions, [2, 2, 2]) == pytest.approx(4.0)


def test_hypervolume_ignores_points_not_strictly_better_than_reference():
    reference = [3, 3]
    assert hypervolume([[4, 1]], MIN2, reference) == 0.0
    assert hypervolume([[3, 1]], MIN2, reference) == 0.0  # on the boundary: zero volume
    assert hypervolume([[1, 2], [4, 0], [3, 0]], MIN2, reference) == pytest.approx(2.0)
    # maximise: a point below the accuracy floor contributes nothing.
    assert hypervolume([[0.4, 10]], ["maximize", "minimize"], [0.5, 200]) == 0.0


def test_hypervolume_dominated_and_duplicate_points_add_nothing():
    base = hypervolume([[1, 2], [2, 1]], MIN2, [3, 3])
    assert hypervolume([[1, 2], [2, 1], [2, 2], [1, 2], [2.5, 2.5]], MIN2, [3, 3]) == pytest.approx(base)


def test_hypervolume_uses_the_given_reference():
    points = [[1, 2], [2, 1]]
    assert hypervolume(points, MIN2, [4, 4]) == pytest.approx(8.0)
    assert hypervolume(points, MIN2, [3, 3]) == pytest.approx(3.0)


def test_hypervolume_checks_reference():
    with pytest.raises(ValueError, match="reference must have length 2"):
        hypervolume([[1, 2]], MIN2, [3, 3, 3])
    with pytest.raises(ValueError, match="reference must hold finite"):
        hypervolume([[1, 2]], MIN2, [3, np.inf])


def test_hypervolume_single_objective():
    assert hypervolume([[0.7], [0.9], [0.2]], ["maximize"], [0.5]) == pytest.approx(0.4)


@pytest.mark.parametrize("seed,n,m", [(0, 30, 2), (1, 200, 2), (2, 25, 3), (3, 25, 3), (4, 12, 4)])
def test_hypervolume_matches_grid_brute_force(seed, n, m):
    rng = np.random.default_rng(seed)
    points = rng.random((n, m))
    if seed == 3:
        points = np.round(points, 1)  # ties and duplicates
    directions = [("minimize", "maximize")[k % 2] for k in range(m)]
    reference = [0.9 if d == "minimize" else 0.1 for d in directions]
    expected = _grid_hypervolume(points, directions, reference)
    assert expected > 0
    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("m", [3, 4])
def test_hypervolume_on_mutually_non_dominated_points(m):
    # Points on a sphere: all non-dominated, the hardest case for slicing.
    rng = np.random.default_rng(10 + m)
    points = np.abs(rng.normal(size=(14 if m == 3 else 9, m)))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    directions = ["minimize"] * m
    assert len(non_dominated(points, directions)) == len(points)
    reference = [1.05] * m
    expected = _grid_hypervolume(points, directions, reference)
    assert hypervolume(points, directions, reference) == pytest.approx(expected, rel=1e-12)


def test_hypervolume_invariant_under_direction_flip():
    rng = np.random.default_rng(7)
    points = rng.random((20, 3))
    reference = [1.0, 1.0, 1.0]
    base = hypervolume(points, ["minimize"] * 3, reference)
    flipped = points * [1, -1, 1]
    assert hypervolume(flipped, ["minimize", "maximize", "minimize"], [1.0, -1.0, 1.0]) == pytest.approx(base)


# ---------- hypervolume history ----------

@pytest.mark.parametrize("seed,m", [(0, 2), (1, 3), (2, 3)])
def test_hypervolume_history_matches_prefix_hypervolumes(seed, m):
    rng = np.random.default_rng(seed)
    points = rng.random((30, m))
    directions = [("maximize", "minimize")[k % 2] for k in range(m)]
    reference = [0.2 if d == "maximize" else 0.8 for d in directions]
    history = hypervolume_history(points, directions, reference)
    assert len(history) == len(points)
    expected = [hypervolume(points[:k], directions, reference) for k in range(1, len(points) + 1)]
    assert history == pytest.approx(expected, rel=1e-12)
    assert all(later >= earlier for earlier, later in zip(history, history[1:]))


def test_hypervolume_history_hand_case():
    points = [[4, 4], [2, 2], [2.5, 2.5], [1, 2], [2, 1]]
    history = hypervolume_history(points, MIN2, [3, 3])
    # [4,4] outside; [2,2] -> 1; [2.5,2.5] dominated; [1,2] -> 2; [2,1] -> 3.
    assert history == pytest.approx([0.0, 1.0, 1.0, 2.0, 3.0])
