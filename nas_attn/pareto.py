"""Pareto dominance, non-dominated sorting, crowding distance and hypervolume.

Pure functions over objective vectors, numpy only. A set of points is anything
``numpy.asarray`` turns into a 2-D float array of shape ``(n_points, n_objectives)``
(a list of lists, a list of tuples, an array); an empty list is the empty set. Each
objective has a direction, ``"maximize"`` or ``"minimize"``, given once per column in
``directions``. Values carry whatever units the caller's objectives have (accuracy as a
fraction, MACs per image, parameter counts); nothing here rescales them except the
crowding distance, which is dimensionless by construction.

Conventions chosen here (and tested):

* Dominance is the usual Pareto dominance: ``a`` dominates ``b`` when ``a`` is no
  worse in every objective and strictly better in at least one. Identical points do
  not dominate each other, so :func:`non_dominated` keeps *every copy* of an identical
  non-dominated point, as Optuna's ``Study.best_trials`` does: two trials with the same
  objective values are both Pareto-optimal trials.
* Crowding distance follows NSGA-II (Deb et al., 2002) with one change for ties: the
  neighbours of a point along an objective are the next *distinct* values above and
  below it, so identical values get identical distances whatever order they come in.
  (Plain NSGA-II gives one of two identical points an infinite distance and the other
  a finite one, depending on sort order.)
* The hypervolume reference point is always the caller's. No function here derives one
  from the data, because a data-derived reference makes hypervolumes of different runs
  incomparable.
* Values must be finite: NaN has no place in an order and an infinite value makes
  ranges and volumes meaningless, so both raise ``ValueError``.
"""
from __future__ import annotations

from typing import List, Literal, Sequence, Tuple

import numpy as np

__all__ = [
    "Direction",
    "DIRECTIONS",
    "validate_directions",
    "dominates",
    "non_dominated",
    "non_dominated_sort",
    "crowding_distance",
    "hypervolume",
    "hypervolume_history",
]

Direction = Literal["maximize", "minimize"]
DIRECTIONS: Tuple[str, ...] = ("maximize", "minimize")


def validate_directions(directions: Sequence[str]) -> Tuple[str, ...]:
    """Check ``directions`` and return them as a tuple.

    Raises ValueError when ``directions`` is a bare string, is empty, or holds anything
    other than ``"maximize"`` / ``"minimize"`` (the message names the bad value).
    """
    if isinstance(directions, (str, bytes)):
        raise ValueError(
            "directions must be a sequence of 'maximize'/'minimize', one per objective, "
            f"not a single string; got {directions!r}"
        )
    try:
        directions = tuple(directions)
    except TypeError:
        raise ValueError(
            f"directions must be a sequence of 'maximize'/'minimize'; got {directions!r}"
        ) from None
    if not directions:
        raise ValueError("directions must name at least one objective; got an empty sequence")
    for position, direction in enumerate(directions):
        if direction not in DIRECTIONS:
            raise ValueError(
                f"directions[{position}] must be one of {list(DIRECTIONS)}; got {direction!r}"
            )
    return directions


def _signs(directions: Tuple[str, ...]) -> np.ndarray:
    # Everything below works in "minimise every column" form; maximised columns are negated.
    return np.array([-1.0 if d == "maximize" else 1.0 for d in directions])


def _float_array(value, expected: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}; got {value!r}") from None


def _as_points(points, directions: Tuple[str, ...], name: str = "points") -> np.ndarray:
    """Return ``points`` as a finite float array (n, m) in minimise-everything form."""
    n_objectives = len(directions)
    array = _float_array(points, f"{name} must be a sequence of numeric vectors of length {n_objectives}")
    if array.size == 0:
        return np.zeros((0, n_objectives))
    if array.ndim != 2 or array.shape[1] != n_objectives:
        raise ValueError(
            f"{name} must have shape (n_points, {n_objectives}) to match "
            f"{n_objectives} directions; got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array).all(axis=1)][0]
        raise ValueError(f"{name} must hold finite values only; got the vector {bad.tolist()}")
    return array * _signs(directions)


def _as_vector(vector, directions: Tuple[str, ...], name: str) -> np.ndarray:
    n_objectives = len(directions)
    array = _float_array(vector, f"{name} must be a numeric vector of length {n_objectives}")
    if array.shape != (n_objectives,):
        raise ValueError(
            f"{name} must have length {n_objectives} to match the directions; "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite values only; got {array.tolist()}")
    return array * _signs(directions)


def _domination_matrix(minimised: np.ndarray) -> np.ndarray:
    """``matrix[i, j]`` is True when point i dominates point j (all columns minimised)."""
    left = minimised[:, None, :]
    right = minimised[None, :, :]
    return (left <= right).all(axis=2) & (left < right).any(axis=2)


def dominates(a, b, directions: Sequence[str]) -> bool:
    """True when objective vector ``a`` Pareto-dominates ``b``.

    ``a`` dominates ``b`` when it is no worse in every objective and strictly better in
    at least one; equal vectors do not dominate each other.
    """
    directions = validate_directions(directions)
    a_min = _as_vector(a, directions, "a")
    b_min = _as_vector(b, directions, "b")
    return bool((a_min <= b_min).all() and (a_min < b_min).any())


def non_dominated(points, directions: Sequence[str]) -> List[int]:
    """Indices (ascending) of the points that no other point dominates.

    Duplicates of a non-dominated point are all kept (identical points do not dominate
    each other), matching Optuna's ``best_trials``. Memory is O(n^2 * m): fine for the
    few thousand trials of a search.
    """
    directions = validate_directions(directions)
    minimised = _as_points(points, directions)
    if len(minimised) == 0:
        return []
    dominated = _domination_matrix(minimised).any(axis=0)
    return np.flatnonzero(~dominated).tolist()


def non_dominated_sort(points, directions: Sequence[str]) -> List[List[int]]:
    """Split the points into successive non-dominated fronts (NSGA-II's fast sort).

    Returns a list of fronts, best first; each front is a list of ascending point
    indices, and every index appears in exactly one front. Front 0 is
    :func:`non_dominated`; front k holds the points dominated only by points in fronts
    < k. An empty set gives ``[]``.
    """
    directions = validate_directions(directions)
    minimised = _as_points(points, directions)
    if len(minimised) == 0:
        return []
    domination = _domination_matrix(minimised)
    dominator_count = domination.sum(axis=0)
    remaining = np.ones(len(minimised), dtype=bool)
    fronts: List[List[int]] = []
    while remaining.any():
        front = remaining & (dominator_count == 0)
        fronts.append(np.flatnonzero(front).tolist())
        dominator_count = dominator_count - domination[front].sum(axis=0)
        remaining &= ~front
    return fronts


def crowding_distance(points, front_indices: Sequence[int], directions: Sequence[str]) -> List[float]:
    """NSGA-II crowding distance of each point of one front (dimensionless).

    Returns one float per entry of ``front_indices``, in the same order. For each
    objective whose values differ inside the front, the points holding the smallest or
    largest value get ``inf`` and every other point adds
    ``(next distinct value above - next distinct value below) / (max - min)``, the range
    being taken over the front. An objective that is constant inside the front carries
    no spread information and adds nothing (no division by zero); when every objective
    is constant (all points identical, including a front of one point) every point is a
    boundary point and gets ``inf``. Identical points always get identical distances.
    Directions only validate the input: the distance does not depend on them.
    """
    directions = validate_directions(directions)
    minimised = _as_points(points, directions)
    indices = list(front_indices)
    for position, index in enumerate(indices):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(
                f"front_indices[{position}] must be an integer point index; got {index!r}"
            )
        if not 0 <= index < len(minimised):
            raise ValueError(
                f"front_indices[{position}] must be in [0, {len(minimised) - 1}]; got {index}"
            )
    if not indices:
        return []
    front = minimised[indices]
    distance = np.zeros(len(front))
    any_spread = False
    for column in front.T:
        distinct = np.unique(column)
        if len(distinct) == 1:
            continue
        any_spread = True
        span = distinct[-1] - distinct[0]
        rank = np.searchsorted(distinct, column)
        below = distinct[np.maximum(rank - 1, 0)]
        above = distinct[np.minimum(rank + 1, len(distinct) - 1)]
        boundary = (rank == 0) | (rank == len(distinct) - 1)
        distance += np.where(boundary, np.inf, (above - below) / span)
    if not any_spread:
        distance[:] = np.inf
    return distance.tolist()


def _hypervolume_2d(minimised: np.ndarray, reference: np.ndarray) -> float:
    # Staircase sweep: sort by the first objective; the area of the strip from x_i to
    # x_{i+1} is its width times the height below the best second objective so far.
    order = np.lexsort((minimised[:, 1], minimised[:, 0]))
    x = minimised[order, 0]
    best_y = np.minimum.accumulate(minimised[order, 1])
    next_x = np.append(x[1:], reference[0])
    return float(np.sum((next_x - x) * (reference[1] - best_y)))


def _hypervolume_minimised(minimised: np.ndarray, reference: np.ndarray) -> float:
    """Exact dominated volume of points that all strictly dominate ``reference``.

    HSO-style slicing: sort by the last objective; between consecutive values of it the
    dominated region's cross-section is the (m-1)-dimensional hypervolume of the points
    seen so far, computed recursively down to the 2-D sweep. Dominated points are
    dropped at every level, which keeps the recursion small. Cost is about
    O(n^(m-1) log n) for n points and m objectives: 100 points in 4 objectives take well
    under a second.
    """
    n_points, n_objectives = minimised.shape
    if n_points == 0:
        return 0.0
    if n_objectives == 1:
        return float(reference[0] - minimised[:, 0].min())
    if n_objectives == 2:
        return _hypervolume_2d(minimised, reference)
    minimised = np.unique(minimised, axis=0)
    minimised = minimised[~_domination_matrix(minimised).any(axis=0)]
    minimised = minimised[np.argsort(minimised[:, -1], kind="stable")]
    last = minimised[:, -1]
    slab_top = np.append(last[1:], reference[-1])
    volume = 0.0
    for count in range(1, len(minimised) + 1):
        thickness = slab_top[count - 1] - last[count - 1]
        if thickness > 0:
            volume += thickness * _hypervolume_minimised(minimised[:count, :-1], reference[:-1])
    return volume


def _prepare_hypervolume(points, directions, reference):
    directions = validate_directions(directions)
    minimised = _as_points(points, directions)
    reference_min = _as_vector(reference, directions, "reference")
    return minimised, reference_min


def hypervolume(points, directions: Sequence[str], reference) -> float:
    """Exact hypervolume (Lebesgue measure) dominated by ``points`` up to ``reference``.

    ``reference`` is one vector in the objectives' own units and directions (e.g. an
    accuracy floor for a maximised accuracy, a MAC ceiling for minimised MACs); the
    result is in the product of the objectives' units. Only points strictly better than
    the reference in every objective contribute; the others are ignored. An empty set,
    or one with no such point, gives 0.0. Exact for any number of objectives (2-D
    sweep; slicing above that, see ``_hypervolume_minimised``).
    """
    minimised, reference_min = _prepare_hypervolume(points, directions, reference)
    inside = minimised[(minimised < reference_min).all(axis=1)]
    return _hypervolume_minimised(inside, reference_min)


def hypervolume_history(points_in_trial_order, directions: Sequence[str], reference) -> List[float]:
    """Hypervolume of the first k points for k = 1..n (for hypervolume-vs-trial plots).

    ``result[k - 1]`` equals ``hypervolume(points[:k], directions, reference)``; the
    list is non-decreasing and has one entry per point (empty input gives ``[]``).
    Only a point that enlarges the dominated region triggers a recomputation, over the
    current non-dominated set.
    """
    minimised, reference_min = _prepare_hypervolume(points_in_trial_order, directions, reference)
    history: List[float] = []
    front = np.zeros((0, len(reference_min)))
    volume = 0.0
    for point in minimised:
        improves = bool((point < reference_min).all()) and not bool(
            (front <= point).all(axis=1).any()
        )
        if improves:
            # Points the newcomer weakly dominates add nothing any more.
            front = front[~(point <= front).all(axis=1)]
            front = np.vstack([front, point])
            volume = _hypervolume_minimised(front, reference_min)
        history.append(volume)
    return history
