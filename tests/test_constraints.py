"""Properties of the CGD constraint projections (tdmctx.ptycho.constraints)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdmctx.ptycho import constraints as C

SHAPE = (24, 20)  # (scan_rows, scan_cols)
N = SHAPE[0] * SHAPE[1]
SMALL = (6, 5)  # small enough to write each constraint as a dense (2N, 2N) matrix
STEP_A = 0.5


def grid(shape: tuple[int, int] = SHAPE, step_A: float = STEP_A) -> np.ndarray:
    """Nominal raster positions (N, 2) as (x, y), row-major."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] * step_A
    return np.stack([x, y], axis=-1).reshape(-1, 2)


def acquisition_times(shape: tuple[int, int], dwell_s: float, flyback_s: float) -> np.ndarray:
    row, col = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (row * (shape[1] * dwell_s + flyback_s) + col * dwell_s).ravel()


def as_matrix(c, shape: tuple[int, int], positions: np.ndarray) -> np.ndarray:
    """The linear map ``c`` on flattened (2N,) fields, column by column."""
    n = shape[0] * shape[1]
    eye = np.eye(2 * n)
    return np.stack([c(e.reshape(n, 2), positions, shape).ravel() for e in eye], axis=1)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def positions(rng) -> np.ndarray:
    """A rotated raster with some jitter, so the affine fit does not rely on a perfect grid."""
    angle = np.deg2rad(7.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return grid() @ rot.T + 3.0 + rng.normal(scale=0.05, size=(N, 2))


TIMES = acquisition_times(SHAPE, dwell_s=1e-3, flyback_s=8e-3)
PROJECTIONS = [
    C.NoTranslation(),
    C.Affine(),
    C.Line(),
    C.Column(),
    C.Lowpass(),
    C.Lowpass(min_period_rows=4, poly_degree=0),
    C.Lowpass(min_period_rows=3, times_s=TIMES),
    C.Highpass(),
    C.Highpass(min_period_rows=4, times_s=TIMES),
]


# ----------------------------------------------------------------------------- pure projections


@pytest.mark.parametrize("c", PROJECTIONS, ids=repr)
def test_projection_is_idempotent(c, rng, positions):
    p = c(rng.normal(size=(N, 2)), positions, SHAPE)
    np.testing.assert_allclose(c(p, positions, SHAPE), p, atol=1e-12)


@pytest.mark.parametrize("c", PROJECTIONS, ids=repr)
def test_projection_is_orthogonal(c, rng, positions):
    a, b = rng.normal(size=(2, N, 2))
    pa, pb = c(a, positions, SHAPE), c(b, positions, SHAPE)
    assert np.vdot(pa, b) == pytest.approx(np.vdot(a, pb), abs=1e-10)
    assert abs(np.vdot(pa, b - pb)) < 1e-10  # the residual is orthogonal to the range


@pytest.mark.parametrize(
    ("c", "dimension"),
    [
        (C.NoTranslation(), SMALL[0] * SMALL[1] - 1),
        (C.Affine(), 2),
        (C.Line(), SMALL[0] - 1),
        (C.Column(), SMALL[1] - 1),
        # 6 rows, 4-row cut-off: cosines k = 0..3, plus 2 polynomials, minus the constant.
        (C.Lowpass(min_period_rows=4), 5),
        (C.Highpass(min_period_rows=4), SMALL[0] * SMALL[1] - 6),
        (C.Lowpass(min_period_rows=math.inf, poly_degree=0), 0),
    ],
    ids=repr,
)
def test_projection_matrix_has_the_expected_rank(c, dimension):
    """Known answer: an orthogonal projection is symmetric with eigenvalues 0 and 1, trace = rank."""
    m = as_matrix(c, SMALL, grid(SMALL))
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    np.testing.assert_allclose(m @ m, m, atol=1e-12)
    assert np.trace(m) == pytest.approx(2 * dimension)  # x and y each carry the subspace


def test_no_constraint_moves_the_scan_as_a_whole(rng, positions):
    constant = np.broadcast_to([0.3, -0.2], (N, 2))
    delta = rng.normal(size=(N, 2)) + [5.0, -7.0]
    composites = [C.Chain(["affine", "line"]), C.Weighted({C.lowpass: 0.3, "column": 0.2})]
    for c in PROJECTIONS + composites:
        np.testing.assert_allclose(c(delta, positions, SHAPE).mean(axis=0), 0.0, atol=1e-12, err_msg=repr(c))
        np.testing.assert_allclose(c(constant, positions, SHAPE), 0.0, atol=1e-12, err_msg=repr(c))


# ----------------------------------------------------------------------------- affine


def test_affine_field_passes_affine_unchanged(rng, positions):
    matrix = np.array([[0.02, -0.01], [0.015, -0.03]])  # scale, rotation and shear
    field = (positions - positions.mean(axis=0)) @ matrix.T
    np.testing.assert_allclose(C.affine(field + [0.4, 0.1], positions, SHAPE), field, atol=1e-12)


def test_affine_depends_only_on_the_span_of_the_positions(rng, positions):
    delta = rng.normal(size=(N, 2))
    ref = C.affine(delta, positions, SHAPE)
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])
    for moved in (positions + [10.0, -4.0], 3.0 * positions, positions @ turn.T):
        np.testing.assert_allclose(C.affine(delta, moved, SHAPE), ref, atol=1e-12)


def test_affine_handles_a_single_row_scan(rng):
    shape = (1, 16)
    pos = grid(shape)
    along_x = np.stack([0.01 * pos[:, 0], -0.02 * pos[:, 0]], axis=-1)
    np.testing.assert_allclose(C.affine(along_x, pos, shape), along_x - along_x.mean(axis=0), atol=1e-12)
    p = C.affine(rng.normal(size=(16, 2)), pos, shape)
    np.testing.assert_allclose(C.affine(p, pos, shape), p, atol=1e-12)


def test_fit_affine_recovers_scale_and_rotation():
    nominal = grid()
    angle = np.deg2rad(2.0)
    true_map = 1.01 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    errors = nominal @ true_map.T + [0.2, -0.1] - nominal
    matrix, translation = C.fit_affine(errors, nominal)
    np.testing.assert_allclose(matrix, true_map - np.eye(2), atol=1e-12)
    np.testing.assert_allclose(translation, errors.mean(axis=0), atol=1e-12)


# ----------------------------------------------------------------------------- line and column


def test_row_constant_field_passes_line_and_column_pattern_passes_column(rng):
    rows = np.broadcast_to(rng.normal(size=(SHAPE[0], 1, 2)), (*SHAPE, 2)).reshape(N, 2)
    cols = np.broadcast_to(rng.normal(size=(1, SHAPE[1], 2)), (*SHAPE, 2)).reshape(N, 2)
    np.testing.assert_allclose(C.line(rows, None, SHAPE), rows - rows.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(C.column(cols, None, SHAPE), cols - cols.mean(axis=0), atol=1e-12)
    # Row shifts and column patterns are orthogonal on a full raster: each kills the other.
    np.testing.assert_allclose(C.line(cols, None, SHAPE), 0.0, atol=1e-12)
    np.testing.assert_allclose(C.column(rows, None, SHAPE), 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- lowpass and highpass


def test_lowpass_keeps_cosines_up_to_the_cut_off_and_removes_the_rest():
    """Known answer for the DCT-II convention: cosine k has a period of 2 * scan_rows / k rows."""
    s = (np.arange(N) + 0.5) / N
    c = C.Lowpass(min_period_rows=4, poly_degree=0)
    k_max = 2 * SHAPE[0] // 4
    for k in (1, k_max // 2, k_max):
        wave = np.stack([np.cos(np.pi * k * s), -0.5 * np.cos(np.pi * k * s)], axis=-1)
        np.testing.assert_allclose(c(wave, None, SHAPE), wave, atol=1e-12)
    for k in (k_max + 1, 3 * k_max, N - 1):
        wave = np.stack([np.cos(np.pi * k * s), np.cos(np.pi * k * s)], axis=-1)
        np.testing.assert_allclose(c(wave, None, SHAPE), 0.0, atol=1e-12)


def test_lowpass_basis_is_orthonormal_cached_and_holds_the_constant():
    u = C.lowpass.basis(SHAPE)
    assert u.shape == (N, 1 + 2 * SHAPE[0] // 16 + 2)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-12)
    np.testing.assert_allclose(u @ (u.T @ np.ones(N)), np.ones(N), atol=1e-12)
    assert C.lowpass.basis(SHAPE) is u
    assert not u.flags.writeable


def test_smooth_drift_passes_lowpass_and_jitter_is_rejected(rng):
    t = (np.arange(N) + 0.5) / N
    quadratic = np.stack([0.3 * t**2 - 0.1 * t, -0.2 * t**2], axis=-1)
    np.testing.assert_allclose(C.lowpass(quadratic, None, SHAPE), quadratic - quadratic.mean(axis=0), atol=1e-12)
    # A sine of any phase with twice the cut-off period is not in the basis, yet passes nearly whole.
    period = 2 * 16 / SHAPE[0]  # as a fraction of the scan
    wave = np.stack([np.sin(2 * np.pi * t / period + 0.7), np.cos(2 * np.pi * t / period + 0.2)], axis=-1)
    assert rel(C.lowpass(wave, None, SHAPE), wave - wave.mean(axis=0)) < 0.01
    jitter = rng.normal(scale=0.05, size=(N, 2))
    assert np.linalg.norm(C.lowpass(jitter, None, SHAPE)) < 0.2 * np.linalg.norm(jitter)
    assert rel(C.highpass(jitter, None, SHAPE), jitter) < 0.2


def test_lowpass_does_not_wrap_around_the_scan_edges():
    """A ramp in time keeps distinct ends; a periodic (FFT) low-pass would pull both to the middle."""
    t = (np.arange(N) + 0.5) / N
    ramp = np.stack([t, -t], axis=-1)
    out = C.Lowpass(min_period_rows=4, poly_degree=0)(ramp, None, SHAPE)
    expected = ramp - ramp.mean(axis=0)
    assert np.abs(out[[0, -1]] - expected[[0, -1]]).max() < 0.03  # ramp range is 1
    assert rel(out, expected) < 0.02


def test_lowpass_uses_true_acquisition_times_with_flyback():
    times = acquisition_times(SHAPE, dwell_s=1e-3, flyback_s=10e-3)  # flyback = half a row
    u = (times - times.min()) / np.ptp(times)
    drift = np.stack([u**2, 0.5 * u**2 - u], axis=-1)
    with_times = C.Lowpass(times_s=times.reshape(SHAPE))
    np.testing.assert_allclose(with_times(drift, None, SHAPE), drift - drift.mean(axis=0), atol=1e-12)
    # The row-major index ignores flyback, so the same drift is no longer a quadratic to it.
    assert rel(C.lowpass(drift, None, SHAPE), drift - drift.mean(axis=0)) > 1e-3


@pytest.mark.parametrize("settings", [{}, {"min_period_rows": 3, "times_s": TIMES}], ids=["index", "times"])
def test_lowpass_plus_highpass_is_the_identity(settings, rng):
    delta = rng.normal(size=(N, 2)) + [1.0, 2.0]
    low, high = C.Lowpass(**settings), C.Highpass(**settings)
    np.testing.assert_allclose(low.smooth_part(delta, None, SHAPE) + high(delta, None, SHAPE), delta, atol=1e-12)
    np.testing.assert_allclose(
        low(delta, None, SHAPE) + high(delta, None, SHAPE), delta - delta.mean(axis=0), atol=1e-12
    )


# ----------------------------------------------------------------------------- composition


def test_sequence_applies_in_turn(rng, positions):
    delta = rng.normal(size=(N, 2))

    def halve(d, p, shape):
        return 0.5 * d

    seq = C.Chain(["lowpass", C.line, halve])
    expected = 0.5 * C.line(C.lowpass(delta, positions, SHAPE), positions, SHAPE)
    np.testing.assert_allclose(seq(delta, positions, SHAPE), expected, atol=1e-12)
    nested = C.Chain([C.lowpass, C.no_translation])  # no_translation contains lowpass's range
    np.testing.assert_allclose(nested(delta, None, SHAPE), C.lowpass(delta, None, SHAPE))


def test_weighted_combination_is_symmetric_contractive_and_not_a_projection():
    pos = grid(SMALL)
    weights = {C.Affine(): 0.5, C.Line(): 0.3}
    w = as_matrix(C.Weighted(weights), SMALL, pos)
    p_affine, p_line, p_none = (as_matrix(c, SMALL, pos) for c in (C.affine, C.line, C.no_translation))
    np.testing.assert_allclose(w, 0.5 * p_affine + 0.3 * p_line + 0.2 * p_none, atol=1e-12)
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    eigenvalues = np.linalg.eigvalsh(w)
    assert eigenvalues.min() > -1e-12 and eigenvalues.max() < 1 + 1e-12
    assert np.abs(w @ w - w).max() > 0.05  # repeated application keeps shrinking: not idempotent


def test_weighted_limits(rng, positions):
    delta = rng.normal(size=(N, 2))
    np.testing.assert_allclose(C.Weighted({"affine": 1.0})(delta, positions, SHAPE), C.affine(delta, positions, SHAPE))
    no_t = C.no_translation(delta, positions, SHAPE)
    np.testing.assert_allclose(C.Weighted({"affine": 0.0, "line": 0.0})(delta, positions, SHAPE), no_t)
    np.testing.assert_allclose(C.Weighted({})(delta, positions, SHAPE), no_t)


def test_get_constraint_builds_by_name_with_settings(rng):
    delta = rng.normal(size=(N, 2))
    assert isinstance(C.get_constraint(" No-Translation "), C.NoTranslation)
    made = C.get_constraint("lowpass", min_period_rows=4, poly_degree=0)
    expected = C.Lowpass(min_period_rows=4, poly_degree=0)(delta, None, SHAPE)
    np.testing.assert_allclose(made(delta, None, SHAPE), expected)
    assert set(C.CONSTRAINT_NAMES) == {"no_translation", "affine", "line", "column", "lowpass", "highpass"}


# ----------------------------------------------------------------------------- array types


def test_grid_shaped_input_keeps_its_shape(rng, positions):
    delta = rng.normal(size=(N, 2))
    out = C.affine(delta.reshape(*SHAPE, 2), positions.reshape(*SHAPE, 2), SHAPE)
    assert out.shape == (*SHAPE, 2)
    np.testing.assert_allclose(out.reshape(N, 2), C.affine(delta, positions, SHAPE))


def test_torch_tensors_come_back_as_tensors(rng, positions):
    torch = pytest.importorskip("torch")
    delta = rng.normal(size=(N, 2))
    out = C.affine(torch.tensor(delta, dtype=torch.float32), torch.tensor(positions), SHAPE)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), C.affine(delta.astype(np.float32), positions, SHAPE), atol=1e-6)


# ----------------------------------------------------------------------------- decomposition


def mixture(rng):
    """Affine + line + drift + jitter on a nominal raster, each part built by hand."""
    pos = grid()
    rows, cols = SHAPE
    t = (np.arange(N) + 0.5) / N
    parts = {"affine": (pos - pos.mean(axis=0)) @ np.array([[0.01, -0.008], [0.008, 0.012]]).T}
    # Drift: Legendre P2 and P3 of time (no linear part in time, which would be affine).
    p2, p3 = 1.5 * (2 * t - 1) ** 2 - 0.5, 2.5 * (2 * t - 1) ** 3 - 1.5 * (2 * t - 1)
    parts["drift"] = np.stack([0.15 * p2 + 0.05 * p3, -0.1 * p3], axis=-1)
    # Line jumps: random per-row shifts with their slow trend removed (cosines of the row index
    # up to 3 half-periods and a quadratic, like the default low-pass basis on 24 rows), since a
    # slow trend in row shifts cannot be told from drift.
    r = (np.arange(rows) + 0.5) / rows
    slow = np.column_stack([np.cos(np.pi * np.outer(r, np.arange(4))), r, r**2])
    shifts = rng.normal(scale=0.05, size=(rows, 2))
    shifts -= slow @ np.linalg.lstsq(slow, shifts, rcond=None)[0]
    parts["line"] = np.repeat(shifts, cols, axis=0)
    parts["jitter"] = rng.normal(scale=0.02, size=(N, 2))
    return pos, parts


def test_decompose_parts_sum_to_the_input(rng, positions):
    errors = rng.normal(size=(N, 2)) + [1.0, -1.0]
    for order in (("affine", "line", "lowpass"), ("column", "lowpass", "affine", "line")):
        parts = C.decompose(errors, positions, SHAPE, order=order)
        assert list(parts) == ["translation", *order, "highpass"]
        np.testing.assert_allclose(sum(parts.values()), errors, atol=1e-12)


def test_decompose_calls_linear_drift_affine():
    pos = grid()
    drift = np.outer(np.arange(N), [1e-3, -5e-4])  # linear in time = linear in (x, y) on a raster
    parts = C.decompose(drift, pos, SHAPE)
    np.testing.assert_allclose(parts["affine"], drift - drift.mean(axis=0), atol=1e-12)
    for name in ("line", "lowpass", "highpass"):
        np.testing.assert_allclose(parts[name], 0.0, atol=1e-12)


def test_decompose_recovers_a_mixture_with_lowpass_before_line(rng):
    pos, truth = mixture(rng)
    errors = sum(truth.values()) + [0.3, -0.2]
    parts = C.decompose(errors, pos, SHAPE, order=("affine", "lowpass", "line"))
    np.testing.assert_allclose(parts["translation"], np.broadcast_to([0.3, -0.2], (N, 2)), atol=0.01)
    # Jitter's row means (1 / sqrt(scan_cols) of it, ~0.22 here) are indistinguishable from line
    # jumps, hence the looser bound for the high-pass part.
    for got, want, tol in [("affine", "affine", 0.2), ("lowpass", "drift", 0.2), ("line", "line", 0.2),
                           ("highpass", "jitter", 0.35)]:
        assert rel(parts[got], truth[want] - truth[want].mean(axis=0)) < tol, got


def test_decompose_default_order_reports_slow_drift_as_line(rng):
    """The design notes' order: slow drift is nearly row-constant, so ``line`` takes it first."""
    pos, truth = mixture(rng)
    errors = sum(truth.values())
    parts = C.decompose(errors, pos, SHAPE)
    assert rel(parts["affine"], truth["affine"]) < 0.25
    assert rel(parts["line"], truth["line"] + truth["drift"]) < 0.15
    assert C.rms_A(parts["lowpass"]) < 0.05 * C.rms_A(truth["drift"])
    # What line leaves of the drift is a sawtooth along each row: not smooth, so it is high-pass.
    assert rel(parts["highpass"], truth["jitter"]) < 0.4


def test_rms_A_known_answer():
    assert C.rms_A(np.broadcast_to([3.0, 4.0], (5, 2))) == pytest.approx(5.0)
    assert C.rms_A([[3.0, 4.0], [0.0, 0.0]]) == pytest.approx(math.sqrt(12.5))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("delta", "positions", "scan_shape", "match"),
    [
        (np.zeros((N, 3)), None, SHAPE, "delta_A has shape"),
        (np.zeros((N + 1, 2)), None, SHAPE, "delta_A has shape"),
        (np.zeros((N, 2)), None, (SHAPE[0] + 1, SHAPE[1]), "delta_A has shape"),
        (np.full((N, 2), np.nan), None, SHAPE, "NaN or infinite"),
        (np.where(np.arange(2 * N).reshape(N, 2) == 7, np.inf, 0.0), None, SHAPE, "1 NaN or infinite"),
        (np.zeros((N, 2), complex), None, SHAPE, "complex"),
        (np.zeros((N, 2)), np.zeros((N, 3)), SHAPE, "positions_A has shape"),
        (np.zeros((N, 2)), None, (0, N), "scan_shape"),
        (np.zeros((N, 2)), None, (SHAPE[0], -SHAPE[1]), "scan_shape"),
        (np.zeros((N, 2)), None, (24.0, 20.0), "scan_shape"),
        (np.zeros((N, 2)), None, (N,), "scan_shape"),
        (np.zeros((N, 2)), None, None, "scan_shape"),
    ],
)
def test_bad_hook_input_raises(delta, positions, scan_shape, match):
    with pytest.raises(ValueError, match=match):
        C.line(delta, positions, scan_shape)


def test_bad_settings_raise(positions):
    delta = np.zeros((N, 2))
    with pytest.raises(ValueError, match="positions_A is None"):
        C.affine(delta, None, SHAPE)
    for kwargs, match in [
        ({"min_period_rows": 1}, "min_period_rows"),
        ({"min_period_rows": float("nan")}, "min_period_rows"),
        ({"poly_degree": -1}, "poly_degree"),
        ({"poly_degree": 1.5}, "poly_degree"),
        ({"times_s": np.zeros(N)}, "times_s spans no time"),
        ({"times_s": np.r_[np.nan, TIMES[1:]]}, "times_s holds 1 NaN"),
    ]:
        with pytest.raises(ValueError, match=match):
            C.Lowpass(**kwargs)
    with pytest.raises(ValueError, match=f"times_s has {N - 1} values; expected {N}"):
        C.Lowpass(times_s=TIMES[:-1])(delta, None, SHAPE)


def test_bad_composition_raises():
    for weights, match in [
        ({"affine": -0.1}, "weight -0.1"),
        ({"affine": float("nan")}, "weight nan"),
        ({"affine": 0.7, "line": 0.4}, "sum to 1.1"),
        ({"affine": "half"}, "not a number"),
        ({"smooth": 0.5}, "unknown"),
        ([0.5], "expected a mapping"),
    ]:
        with pytest.raises(ValueError, match=match):
            C.Weighted(weights)
    with pytest.raises(ValueError, match="constraints is empty"):
        C.Chain([])
    with pytest.raises(ValueError, match="expected a list"):
        C.Chain("affine")
    with pytest.raises(ValueError, match="holds 3"):
        C.Chain([C.affine, 3])
    with pytest.raises(ValueError, match="the output of"):
        C.Chain([lambda d, p, s: d[:-1]])(np.zeros((N, 2)), None, SHAPE)


def test_bad_names_and_decompose_arguments_raise(positions):
    with pytest.raises(ValueError, match="name='drift' is unknown; expected one of no_translation, affine"):
        C.get_constraint("drift")
    with pytest.raises(ValueError, match="'line' got settings \\['n_terms'\\]"):
        C.get_constraint("line", n_terms=3)
    errors = np.zeros((N, 2))
    with pytest.raises(ValueError, match="order="):
        C.decompose(errors, positions, SHAPE, order=("affine", "affine"))
    with pytest.raises(ValueError, match="order="):
        C.decompose(errors, positions, SHAPE, order=("jitter",))
    with pytest.raises(ValueError, match="low-pass settings"):
        C.decompose(errors, positions, SHAPE, order=("affine",), min_period_rows=4)
    with pytest.raises(ValueError, match="errors_A has shape"):
        C.decompose(errors[:-1], positions, SHAPE)
    with pytest.raises(ValueError, match="field_A has"):
        C.fit_affine(errors[:-1], positions)
    with pytest.raises(ValueError, match="expected \\(\\.\\.\\., 2\\)"):
        C.rms_A(np.zeros(3))


def test_span_of_line_and_column_is_the_projection_onto_their_sum():
    rng = np.random.default_rng(3)
    shape = (7, 9)
    delta = rng.normal(size=(63, 2))
    span = C.Span(["line", "column"])
    once = span(delta, None, shape)
    np.testing.assert_allclose(span(once, None, shape), once, atol=1e-12)
    # Orthogonal: the residual is orthogonal to every projected field.
    other = span(rng.normal(size=(63, 2)), None, shape)
    assert abs(np.sum((delta - once) * other)) < 1e-9
    # A row pattern plus a column pattern passes unchanged; Chain would have removed it.
    rows = np.repeat(rng.normal(size=(7, 1, 2)), 9, axis=1)
    cols = np.repeat(rng.normal(size=(1, 9, 2)), 7, axis=0)
    field = (rows + cols).reshape(-1, 2)
    field -= field.mean(axis=0)
    np.testing.assert_allclose(span(field, None, shape), field, atol=1e-12)
    assert np.abs(C.Chain(["line", "column"])(field, None, shape)).max() < 1e-12


def test_span_refuses_overlapping_subspaces():
    with pytest.raises(ValueError, match="not mutually orthogonal"):
        C.Span(["lowpass", "line"])(np.ones((64, 2)), None, (8, 8))
