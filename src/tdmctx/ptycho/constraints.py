"""Constraint projections for the scan-position step of constrained gradient descent (CGD).

Every constraint is a callable with the engine's position hook signature::

    constraint(delta_A, positions_A, scan_shape) -> ndarray (N, 2)

``delta_A`` is the position step (x, y) in Angstrom about to be applied to the whole scan,
flattened row-major (rows along y, the slow axis); ``positions_A`` are the (N, 2) positions
that the affine part is fitted against (nominal or current); ``scan_shape`` is
``(scan_rows, scan_cols)``. Arrays shaped ``(scan_rows, scan_cols, 2)`` are accepted too and
come back in that shape; torch tensors come back as tensors of the same dtype and device,
though the arithmetic is numpy float64 either way.

Each pure constraint is an orthogonal projection, applied to the x and y components
alike, onto a subspace of fields with no net translation (ptychography cannot see a global
shift, so no constraint may move the scan as a whole):

========================  ==================================================================
``no_translation``        remove the mean step
``affine``                least-squares fit ``M (p - mean p)``: scale, rotation and shear
``line``                  one rigid shift per scan row (row means), minus the overall mean
``column``                one pattern along the fast axis shared by every row, minus the mean
``lowpass``               the part smooth in acquisition time (drift), see :class:`Lowpass`
``highpass``              the step minus its smooth part (jitter)
========================  ==================================================================

:class:`Chain` applies constraints in turn, :class:`Span` projects onto the sum of
orthogonal subspaces (e.g. line + column) and :class:`Weighted` blends them with the
unconstrained step; neither is a projection in general. :func:`decompose` splits an error
field into translation, affine, line, low-pass and high-pass parts that sum to it exactly.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import numpy as np
from numpy.polynomial import legendre
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CONSTRAINT_NAMES",
    "Constraint",
    "NoTranslation",
    "Affine",
    "Line",
    "Column",
    "Lowpass",
    "Highpass",
    "Chain",
    "Span",
    "Weighted",
    "no_translation",
    "affine",
    "line",
    "column",
    "lowpass",
    "highpass",
    "get_constraint",
    "decompose",
    "fit_affine",
    "rms_A",
]

Field: TypeAlias = NDArray[np.float64]
#: What composites accept: a constraint, a registered name, or any callable with the hook signature.
ConstraintLike: TypeAlias = "Constraint | str | Callable[..., Any]"

# Singular values below this fraction of the largest are treated as rank deficiency
# (collinear positions, more basis terms than scan positions).
_RANK_RTOL = 1e-10


# ----------------------------------------------------------------------------- validation


def _check_scan_shape(scan_shape: Any) -> tuple[int, int]:
    try:
        rows, cols = scan_shape
    except (TypeError, ValueError):
        raise ValueError(f"scan_shape={scan_shape!r} is not a pair; expected (scan_rows, scan_cols)") from None
    for v in (rows, cols):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"scan_shape={scan_shape!r}; expected two positive integers (scan_rows, scan_cols)")
    return int(rows), int(cols)


def _to_numpy(value: Any) -> Any:
    # Only look for torch if something already imported it: a tensor cannot exist otherwise,
    # and importing torch here would cost a second for numpy-only users.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return value


def _as_real(name: str, value: Any) -> NDArray[np.float64]:
    value = _to_numpy(value)
    if np.iscomplexobj(value):
        raise ValueError(f"{name} is complex; expected real (x, y) values in Angstrom")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be read as real numbers ({exc})") from None
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} holds {bad} NaN or infinite values; expected finite values")
    return arr


def _as_field(name: str, value: Any, shape: tuple[int, int]) -> Field:
    """Read an (N, 2) or (rows, cols, 2) field as a finite float64 (N, 2) array."""
    rows, cols = shape
    n = rows * cols
    arr = _as_real(name, value)
    if arr.shape not in ((n, 2), (rows, cols, 2)):
        raise ValueError(
            f"{name} has shape {arr.shape}; expected ({n}, 2) or ({rows}, {cols}, 2) for scan_shape={shape}"
        )
    return arr.reshape(n, 2)


def _as_points(name: str, value: Any) -> Field:
    """Read a (..., 2) array of (x, y) vectors as a non-empty finite float64 (n, 2) array."""
    arr = _as_real(name, value)
    if arr.ndim < 1 or arr.shape[-1] != 2 or arr.size == 0:
        raise ValueError(f"{name} has shape {arr.shape}; expected (..., 2) (x, y) vectors, at least one")
    return arr.reshape(-1, 2)


def _restore(out: Field, like: Any) -> Any:
    """Give ``out`` the shape and array type of the caller's ``delta_A``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(like, torch.Tensor):
        return torch.as_tensor(out.reshape(tuple(like.shape)), dtype=like.dtype, device=like.device)
    return out.reshape(np.shape(like))


def _orthonormal_columns(b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Orthonormal basis of the column space of ``b``, rank-revealing (SVD)."""
    u, s, _ = np.linalg.svd(b, full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return np.zeros((b.shape[0], 0))
    return u[:, s > s[0] * _RANK_RTOL]


def _remove_mean(field: Field) -> Field:
    return field - field.mean(axis=0)


# ----------------------------------------------------------------------------- constraints


class Constraint:
    """Base class: validates the hook arguments and dispatches to :meth:`_project`.

    Subclasses implement ``_project(delta, positions, shape)`` on validated float64
    (N, 2) arrays (``positions`` may be ``None``) and return a new (N, 2) array.
    """

    name: str = "constraint"

    def __call__(self, delta_A: ArrayLike, positions_A: ArrayLike | None, scan_shape: tuple[int, int]) -> Any:
        """Project the position step.

        Parameters
        ----------
        delta_A
            Position step (x, y) in Angstrom, (N, 2) row-major or (scan_rows, scan_cols, 2);
            numpy array or torch tensor.
        positions_A
            Positions (x, y) in Angstrom, same shape as ``delta_A``, used by the affine fit.
            ``None`` is accepted by constraints that do not use positions.
        scan_shape
            ``(scan_rows, scan_cols)`` with ``scan_rows * scan_cols == N``.

        Returns
        -------
        ndarray or torch.Tensor
            The constrained step, in Angstrom, with the shape and type of ``delta_A`` and no
            net translation.

        Raises
        ------
        ValueError
            On a malformed ``scan_shape``, a shape that does not match it, or NaN/inf values.
        """
        shape = _check_scan_shape(scan_shape)
        delta = _as_field("delta_A", delta_A, shape)
        positions = None if positions_A is None else _as_field("positions_A", positions_A, shape)
        return _restore(self._project(delta, positions, shape), delta_A)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoTranslation(Constraint):
    """Remove the mean step: the one freedom ptychography cannot see."""

    name = "no_translation"

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        return _remove_mean(delta)


class Affine(Constraint):
    """Least-squares global affine map of the centred positions, without translation.

    Each component of the step is regressed on ``(x - mean x, y - mean y)``, so the
    projection keeps ``delta_i = M (p_i - mean p)`` for the best 2 x 2 matrix ``M`` (scale
    per axis, rotation, shear). It depends only on the span of the centred positions: it is
    unchanged when the positions are shifted, scaled or rotated. Collinear positions (a
    single row or column) leave a rank-1 fit.
    """

    name = "affine"

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        if positions is None:
            raise ValueError("positions_A is None; the affine constraint needs the (N, 2) positions it fits against")
        q = _orthonormal_columns(_remove_mean(positions))
        return q @ (q.T @ delta)


class Line(Constraint):
    """One rigid shift per scan row (the row mean of the step), minus the overall mean."""

    name = "line"

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        grid = delta.reshape(*shape, 2)
        out = np.broadcast_to(grid.mean(axis=1, keepdims=True), grid.shape).reshape(-1, 2)
        return out - delta.mean(axis=0)


class Column(Constraint):
    """One pattern along the fast axis shared by every row (e.g. flyback settling), minus the mean.

    The pattern is indexed by column, which assumes every row is scanned in the same
    direction (no serpentine scans).
    """

    name = "column"

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        grid = delta.reshape(*shape, 2)
        out = np.broadcast_to(grid.mean(axis=0, keepdims=True), grid.shape).reshape(-1, 2)
        return out - delta.mean(axis=0)


@functools.lru_cache(maxsize=16)
def _index_basis(rows: int, cols: int, min_period_rows: float, poly_degree: int) -> NDArray[np.float64]:
    n = rows * cols
    basis = _smooth_basis((np.arange(n) + 0.5) / n, rows, min_period_rows, poly_degree)
    basis.setflags(write=False)  # shared through the cache
    return basis


def _smooth_basis(s: NDArray[np.float64], rows: int, min_period_rows: float, poly_degree: int) -> Field:
    # Cosine k has period 2 T / k over a scan of duration T = rows row-times, i.e. 2 rows / k rows.
    n_cos = min(math.floor(2 * rows / min_period_rows), s.size - 1)
    terms = [np.cos(np.pi * np.outer(s, np.arange(n_cos + 1)))]
    if poly_degree > 0:
        terms.append(legendre.legvander(2.0 * s - 1.0, poly_degree)[:, 1:])
    return _orthonormal_columns(np.hstack(terms))


class Lowpass(Constraint):
    """The part of the step that varies slowly in acquisition time (drift), without translation.

    Orthogonal projection onto the span, orthonormalised by SVD, of

    * cosines ``cos(pi k s)`` for ``k = 0 .. floor(2 scan_rows / min_period_rows)``, and
    * Legendre polynomials ``P_d(2 s - 1)`` for ``d = 1 .. poly_degree``,

    where ``s`` in (0, 1) is the acquisition time scaled to the scan duration. Without
    ``times_s``, ``s = (i + 1/2) / N`` for the row-major index ``i`` (uniform dwell, zero
    flyback) and the cosines are exactly the DCT-II basis. Cosines are even about both ends
    of the scan, so, unlike a Fourier basis, the first and last positions are not tied
    together (no wrap-around). The polynomials make linear and quadratic drift pass
    exactly instead of to within the cosines' truncation error.

    Parameters
    ----------
    min_period_rows
        Cut-off: the shortest period kept, in row durations (a row duration is the scan
        duration divided by ``scan_rows``, flyback included); e.g. 16 on a 64-row scan keeps
        cosines k = 0..8. Counting in rows, not in terms, keeps the cut-off at the same
        physical time scale on small and large scans of equal row time. Must be at least
        2 (row-to-row alternation belongs to ``line``); ``math.inf`` keeps only the
        constant and the polynomials.
    poly_degree
        Highest Legendre degree added to the cosines, 0 to 3.
    times_s
        Optional acquisition time of each position in seconds, (N,) in row-major position
        order or (scan_rows, scan_cols); e.g. ``row * (cols * dwell + flyback) + col * dwell``.
        Only relative times matter.

    Notes
    -----
    The basis is cached per ``scan_shape`` (and per settings), so calling the same instance
    every pass costs two small matrix products.
    """

    name = "lowpass"

    def __init__(self, min_period_rows: float = 16.0, poly_degree: int = 2, times_s: ArrayLike | None = None):
        if not isinstance(min_period_rows, (int, float, np.integer, np.floating)) or not min_period_rows >= 2:
            raise ValueError(f"min_period_rows={min_period_rows!r}; expected a number of rows >= 2 (or math.inf)")
        if isinstance(poly_degree, bool) or not isinstance(poly_degree, (int, np.integer)) or not 0 <= poly_degree <= 3:
            raise ValueError(f"poly_degree={poly_degree!r}; expected an integer from 0 to 3")
        self.min_period_rows = float(min_period_rows)
        self.poly_degree = int(poly_degree)
        self.times_s: NDArray[np.float64] | None = None
        if times_s is not None:
            t = _as_real("times_s", times_s).ravel()
            if t.size == 0 or np.ptp(t) == 0:
                raise ValueError(f"times_s spans no time ({t.size} values, all equal); expected acquisition times")
            t.setflags(write=False)
            self.times_s = t
        self._cache: dict[tuple[int, int], NDArray[np.float64]] = {}

    def basis(self, scan_shape: tuple[int, int]) -> NDArray[np.float64]:
        """Orthonormal smooth basis, (N, n_terms), read-only; its span contains the constant."""
        rows, cols = _check_scan_shape(scan_shape)
        if self.times_s is None:
            return _index_basis(rows, cols, self.min_period_rows, self.poly_degree)
        if (rows, cols) not in self._cache:
            t = self.times_s
            if t.size != rows * cols:
                raise ValueError(
                    f"times_s has {t.size} values; expected {rows * cols} for scan_shape={(rows, cols)}"
                )
            # Half a typical dwell of margin at each end, so uniform times give exactly s = (i + 1/2) / N.
            steps = np.diff(np.sort(t))
            half = 0.5 * float(np.median(steps[steps > 0]))
            s = (t - t.min() + half) / (np.ptp(t) + 2 * half)
            basis = _smooth_basis(s, rows, self.min_period_rows, self.poly_degree)
            basis.setflags(write=False)
            self._cache[(rows, cols)] = basis
        return self._cache[(rows, cols)]

    def smooth_part(self, delta_A: ArrayLike, positions_A: ArrayLike | None, scan_shape: tuple[int, int]) -> Any:
        """Like calling the constraint, but keeping the mean: the projection onto the full basis."""
        shape = _check_scan_shape(scan_shape)
        return _restore(self._smooth(_as_field("delta_A", delta_A, shape), shape), delta_A)

    def _smooth(self, delta: Field, shape: tuple[int, int]) -> Field:
        u = self.basis(shape)
        return u @ (u.T @ delta)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        return self._smooth(delta, shape) - delta.mean(axis=0)

    def __repr__(self) -> str:
        times = "" if self.times_s is None else f", times_s=<{self.times_s.size} values>"
        return f"{type(self).__name__}(min_period_rows={self.min_period_rows:g}, poly_degree={self.poly_degree}{times})"


class Highpass(Constraint):
    """The step minus its smooth part (jitter): the complement of :class:`Lowpass`.

    Takes the same parameters as :class:`Lowpass` and keeps it as ``.lowpass``. Since the
    constant lies in the smooth basis, the result has no net translation, and
    ``lowpass + highpass`` with equal settings is the step minus its mean.
    """

    name = "highpass"

    def __init__(self, min_period_rows: float = 16.0, poly_degree: int = 2, times_s: ArrayLike | None = None):
        self.lowpass = Lowpass(min_period_rows=min_period_rows, poly_degree=poly_degree, times_s=times_s)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        # The mean is zero in exact arithmetic; removing it again clears the rounding residue.
        return _remove_mean(delta - self.lowpass._smooth(delta, shape))

    def __repr__(self) -> str:
        return "Highpass" + repr(self.lowpass)[len("Lowpass") :]


def _resolve(c: Any, argument: str) -> Constraint | Callable[..., Any]:
    if isinstance(c, str):
        return get_constraint(c)
    if isinstance(c, Constraint) or callable(c):
        return c
    raise ValueError(f"{argument} holds {c!r}; expected a constraint, a constraint name or a hook callable")


def _apply(c: Constraint | Callable[..., Any], delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
    if isinstance(c, Constraint):
        return c._project(delta, positions, shape)
    # A user's hook: hand it copies so it cannot edit our arrays, and check what comes back.
    out = c(delta.copy(), None if positions is None else positions.copy(), shape)
    return _as_field(f"the output of {c!r}", out, shape)


def _resolve_list(constraints: Any) -> tuple[Constraint | Callable[..., Any], ...]:
    """Validate a non-empty list of constraints (objects, names or hooks) for a composite."""
    if isinstance(constraints, (str, Constraint)) or not isinstance(constraints, Iterable):
        raise ValueError(f"constraints={constraints!r}; expected a list of constraints")
    resolved = tuple(_resolve(c, "constraints") for c in constraints)
    if not resolved:
        raise ValueError("constraints is empty; expected at least one constraint")
    return resolved


class Chain(Constraint):
    """Apply constraints in turn, then remove any net translation.

    Not a projection unless the projections commute; ``Chain([a, b])`` equals
    ``b(a(delta))`` (minus its mean).

    Parameters
    ----------
    constraints
        Constraints, registered names (see :data:`CONSTRAINT_NAMES`) or hook callables.
    """

    name = "sequence"

    def __init__(self, constraints: Iterable[ConstraintLike]):
        self.constraints = _resolve_list(constraints)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        for c in self.constraints:
            delta = _apply(c, delta, positions, shape)
        return _remove_mean(delta)

    def __repr__(self) -> str:
        return f"Chain({list(self.constraints)!r})"


class Span(Constraint):
    """Projection onto the span of mutually orthogonal constraint subspaces.

    For orthogonal projections ``P_i`` whose ranges are mutually orthogonal, the projection
    onto the sum of the ranges is ``sum_i P_i`` (while :class:`Chain` would give zero:
    ``line`` followed by ``column`` removes everything, since a row-constant field has no
    column pattern). ``Span(["line", "column"])`` is the line stage of iCGD: one rigid
    shift per row plus one flyback pattern shared by the rows. Orthogonality is checked on
    the first call for each scan shape (a random field must give an idempotent result).

    Parameters
    ----------
    constraints
        Constraints or registered names whose ranges are mutually orthogonal.
    """

    name = "span"

    def __init__(self, constraints: Iterable[ConstraintLike]):
        self.constraints = _resolve_list(constraints)
        self._checked: set[tuple[int, int]] = set()

    def _sum(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        out = np.zeros_like(delta)
        for c in self.constraints:
            out = out + _apply(c, delta, positions, shape)
        return _remove_mean(out)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        if shape not in self._checked:
            probe = np.random.default_rng(0).normal(size=delta.shape)
            once = self._sum(probe, positions, shape)
            twice = self._sum(once, positions, shape)
            if not np.allclose(once, twice, atol=1e-9 * max(1.0, float(np.abs(once).max()))):
                raise ValueError(f"Span{list(self.constraints)!r}: the subspaces are not mutually orthogonal")
            self._checked.add(shape)
        return self._sum(delta, positions, shape)

    def __repr__(self) -> str:
        return f"Span({list(self.constraints)!r})"


class Weighted(Constraint):
    """Weighted blend of constraints with the unconstrained step, then net translation removed.

    ``W(delta) = sum_i w_i P_i(delta) + (1 - sum_i w_i) delta``, minus its mean. With
    self-adjoint projections ``P_i`` this is linear, self-adjoint and contractive (its
    eigenvalues lie in [0, 1]) but not idempotent: repeated application keeps shrinking the
    unconstrained share. ``{P: 1}`` is ``P``; all weights 0 is ``no_translation``.

    Parameters
    ----------
    weights
        Mapping (or iterable of pairs) from constraint, registered name or hook callable to
        its weight; weights >= 0 summing to at most 1.
    """

    name = "weighted"

    def __init__(self, weights: Mapping[ConstraintLike, float] | Iterable[tuple[ConstraintLike, float]]):
        pairs = list(weights.items() if isinstance(weights, Mapping) else weights)
        if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise ValueError(
                f"weights={weights!r}; expected a mapping {{constraint: weight}} or (constraint, weight) pairs"
            )
        self.weights: tuple[tuple[Constraint | Callable[..., Any], float], ...] = ()
        for c, w in pairs:
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise ValueError(f"weight {w!r} for {c!r} is not a number; expected a weight in [0, 1]") from None
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight {w!r} for {c!r}; expected a finite weight >= 0")
            self.weights += ((_resolve(c, "weights"), w),)
        total = math.fsum(w for _, w in self.weights)
        if total > 1 + 1e-12:
            raise ValueError(f"weights sum to {total:g}; expected at most 1 (the rest stays unconstrained)")
        self.free_weight = max(0.0, 1.0 - total)

    def _project(self, delta: Field, positions: Field | None, shape: tuple[int, int]) -> Field:
        out = self.free_weight * delta
        for c, w in self.weights:
            if w > 0:
                out = out + w * _apply(c, delta, positions, shape)
        return _remove_mean(out)

    def __repr__(self) -> str:
        return f"Weighted({dict(self.weights)!r})"


no_translation = NoTranslation()
affine = Affine()
line = Line()
column = Column()
lowpass = Lowpass()
highpass = Highpass()

_REGISTRY: dict[str, type[Constraint]] = {
    "no_translation": NoTranslation,
    "affine": Affine,
    "line": Line,
    "column": Column,
    "lowpass": Lowpass,
    "highpass": Highpass,
}
#: Names accepted by :func:`get_constraint` (and the command line's ``--constraint``).
CONSTRAINT_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_constraint(name: str, **kwargs: Any) -> Constraint:
    """Build a constraint by name.

    Parameters
    ----------
    name
        One of :data:`CONSTRAINT_NAMES`; case and ``-``/``_`` are not significant.
    **kwargs
        Settings of that constraint, e.g. ``min_period_rows`` for ``lowpass``/``highpass``.

    Returns
    -------
    Constraint

    Raises
    ------
    ValueError
        For an unknown name or a setting the constraint does not take.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _REGISTRY:
        raise ValueError(f"constraint name={name!r} is unknown; expected one of {', '.join(CONSTRAINT_NAMES)}")
    cls = _REGISTRY[key]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        accepted = [p for p in inspect.signature(cls).parameters] or ["none"]
        raise ValueError(
            f"constraint {key!r} got settings {sorted(kwargs)}; it accepts: {', '.join(accepted)}"
        ) from None
    return cls(**kwargs)


# ----------------------------------------------------------------------------- analysis


_DECOMPOSE_PARTS = ("affine", "line", "column", "lowpass")


def decompose(
    errors_A: ArrayLike,
    positions_A: ArrayLike,
    scan_shape: tuple[int, int],
    *,
    order: Iterable[str] = ("affine", "line", "lowpass"),
    **lowpass_kwargs: Any,
) -> dict[str, NDArray[np.float64]]:
    """Split a position-error field into translation, affine, line, low-pass and high-pass parts.

    The translation (mean) is taken first; then each part in ``order`` is the projection of
    what the previous parts left; ``"highpass"`` is the rest. The parts sum exactly (to
    rounding) to ``errors_A``, but they are not mutually orthogonal: each part only sees
    what earlier ones left, so the order is the convention. Linear drift is affine.

    Parameters
    ----------
    errors_A
        Error field (x, y) in Angstrom, e.g. estimated minus true positions, (N, 2)
        row-major or (scan_rows, scan_cols, 2).
    positions_A
        Positions the affine part is fitted against (usually nominal), same shape.
    scan_shape
        ``(scan_rows, scan_cols)``.
    order
        Parts taken after the translation, from ``"affine"``, ``"line"``, ``"column"``,
        ``"lowpass"``. The default is the design notes' order. Slow drift is nearly constant
        along each row, so with ``line`` before ``lowpass`` most non-affine drift is reported
        as ``line``; ``("affine", "lowpass", "line")`` gives slowly varying row shifts to
        the low-pass part instead.
    **lowpass_kwargs
        Settings of the low-pass part (see :class:`Lowpass`).

    Returns
    -------
    dict of str to ndarray
        ``"translation"``, the parts of ``order`` in that order, then ``"highpass"``; each in
        Angstrom with the shape of ``errors_A``.

    Raises
    ------
    ValueError
        On bad shapes or values, or an unknown, repeated or misplaced part name.
    """
    shape = _check_scan_shape(scan_shape)
    errors = _as_field("errors_A", errors_A, shape)
    positions = _as_field("positions_A", positions_A, shape)
    order = (order,) if isinstance(order, str) else tuple(order)
    if any(p not in _DECOMPOSE_PARTS for p in order) or len(set(order)) != len(order):
        raise ValueError(f"order={order!r}; expected distinct names from {', '.join(_DECOMPOSE_PARTS)}")
    if lowpass_kwargs and "lowpass" not in order:
        raise ValueError(f"low-pass settings {sorted(lowpass_kwargs)} given but order={order!r} has no 'lowpass'")

    translation = np.broadcast_to(errors.mean(axis=0), errors.shape).copy()
    rest = errors - translation
    parts = {"translation": translation}
    for name in order:
        c = Lowpass(**lowpass_kwargs) if name == "lowpass" else get_constraint(name)
        parts[name] = c._project(rest, positions, shape)
        rest = rest - parts[name]
    parts["highpass"] = rest
    out_shape = np.shape(_to_numpy(errors_A))
    return {k: v.reshape(out_shape) for k, v in parts.items()}


def fit_affine(field_A: ArrayLike, positions_A: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares affine map of a field over positions.

    Finds ``matrix`` (2, 2) and ``translation`` (2,) minimising the squared residual of
    ``field_i = matrix @ (p_i - mean p) + translation``. For an error field
    ``true - nominal`` of a scan scaled by ``1 + s``, ``matrix`` is ``s * I``.

    Parameters
    ----------
    field_A
        Vectors (x, y) in Angstrom, (..., 2).
    positions_A
        Positions (x, y) in Angstrom, same number of points.

    Returns
    -------
    matrix : ndarray (2, 2)
        Dimensionless; rows give the x and y components.
    translation : ndarray (2,)
        The mean of the field, in Angstrom.
    """
    field = _as_points("field_A", field_A)
    positions = _as_points("positions_A", positions_A)
    if field.shape != positions.shape:
        raise ValueError(f"field_A has {len(field)} vectors but positions_A has {len(positions)}; expected equal")
    translation = field.mean(axis=0)
    coef, *_ = np.linalg.lstsq(_remove_mean(positions), field - translation, rcond=None)
    return coef.T, translation


def rms_A(field_A: ArrayLike) -> float:
    """Root mean square vector length of a (..., 2) field, in the field's unit (Angstrom)."""
    field = _as_points("field_A", field_A)
    return float(np.sqrt(np.mean(np.sum(field**2, axis=1))))
