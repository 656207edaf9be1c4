"""Margin-based bitext mining: formulas against direct numpy, strategy semantics, thresholds, real data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from core.errors import InputError
from evaluation.mining import best_threshold, evaluate, score_histogram
from index import neighbours
from index.mining import SCORES, STRATEGIES, MiningResult, Score, Strategy, mine
from index.neighbours import knn, knn_both
from model.encoder import Encoder
from tests.conftest import SHARED

F32 = npt.NDArray[np.float32]


def unit(a: npt.ArrayLike) -> F32:
    v = np.asarray(a, dtype=np.float32)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=np.float32)


def random_unit(rng: np.random.Generator, n: int, d: int = 16) -> F32:
    return unit(rng.standard_normal((n, d)))


def direct_margin(x: F32, y: F32, k: int, score: str) -> npt.NDArray[np.float64]:
    """The full n x m margin matrix, computed the textbook way (float64)."""
    cos = x.astype(np.float64) @ y.astype(np.float64).T
    kx, ky = min(k, y.shape[0]), min(k, x.shape[0])
    x_mean = np.sort(cos, axis=1)[:, ::-1][:, :kx].mean(axis=1)
    y_mean = np.sort(cos, axis=0)[::-1, :][:ky, :].mean(axis=0)
    avg = (x_mean[:, None] + y_mean[None, :]) / 2
    out: npt.NDArray[np.float64] = {"ratio": cos / avg, "distance": cos - avg, "absolute": cos}[score]
    return out


def direct_candidates(x: F32, y: F32, k: int, score: str) -> tuple[list[int], list[int]]:
    """Each source's best target and each target's best source among its k nearest (by cosine)."""
    cos = x @ y.T
    m = direct_margin(x, y, k, score)
    fwd = [int(nn[np.argmax(m[i, nn])]) for i, nn in enumerate(np.argsort(-cos, axis=1)[:, :k])]
    bwd = [int(nn[np.argmax(m[nn, j])]) for j, nn in enumerate(np.argsort(-cos.T, axis=1)[:, :k])]
    return fwd, bwd


def as_set(result: MiningResult) -> set[tuple[int, int]]:
    return {(s, t) for s, t, _ in result}


# --------------------------------------------------------------------------- knn


def test_knn_is_exact_and_chunking_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    q, b = random_unit(rng, 300), random_unit(rng, 200)
    sims, ids = knn(q, b, k=5)
    assert sims.shape == ids.shape == (300, 5)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    expected = np.sort(q @ b.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(sims, expected, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(q @ b.T, ids, axis=1), sims, atol=1e-5)
    chunked_sims, chunked_ids = knn(q, b, k=5, chunk_size=7)
    np.testing.assert_array_equal(chunked_ids, ids)
    np.testing.assert_array_equal(chunked_sims, sims)


def test_knn_clips_k_to_the_base_size() -> None:
    rng = np.random.default_rng(1)
    sims, ids = knn(random_unit(rng, 10), random_unit(rng, 3), k=50)
    assert sims.shape == ids.shape == (10, 3)
    assert all(sorted(row) == [0, 1, 2] for row in ids.tolist())


def test_knn_accepts_float64_and_lists() -> None:
    sims, ids = knn([[1.0, 0.0], [0.0, 1.0]], np.eye(2), k=1)
    assert ids.ravel().tolist() == [0, 1]
    np.testing.assert_allclose(sims.ravel(), [1.0, 1.0])


@pytest.mark.parametrize(
    ("n", "m", "chunk", "columns"), [(300, 200, 64, 50), (37, 500, 8, 1000), (5, 3, 2, 2)]
)
def test_knn_both_equals_knn_in_each_direction(
    monkeypatch: pytest.MonkeyPatch, n: int, m: int, chunk: int, columns: int
) -> None:
    """Partial row and column tiles, k larger than a side, and clustered data where many target
    columns change in every tile all go through the scattered-row heap update."""
    monkeypatch.setattr(neighbours, "TILE_COLUMNS", columns)
    rng = np.random.default_rng(n)
    centres = random_unit(rng, 4)
    x = centres[rng.integers(0, 4, n)] + 0.3 * random_unit(rng, n)
    y = centres[rng.integers(0, 4, m)] + 0.3 * random_unit(rng, m)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    done: list[int] = []
    xs, xi, ys, yi = knn_both(x, y, k=4, chunk_size=chunk, progress=done.append)
    assert sum(done) == n and len(done) == -(-n // chunk)
    for (sims, ids), (q, b) in (((xs, xi), (x, y)), ((ys, yi), (y, x))):
        expected_sims, expected_ids = knn(q, b, k=4)
        assert sims.shape == ids.shape == (q.shape[0], min(4, b.shape[0]))
        np.testing.assert_allclose(sims, expected_sims, atol=1e-5)
        # Ids may differ only where two neighbours tie to float rounding.
        np.testing.assert_allclose(np.take_along_axis(q @ b.T, ids, axis=1), sims, atol=1e-5)
        assert (ids == expected_ids).mean() > 0.99


@pytest.mark.parametrize(
    ("queries", "base", "k", "message"),
    [
        (np.zeros((0, 4)), np.ones((3, 4)), 2, "queries is empty"),
        (np.ones((3, 4)), np.zeros((0, 4)), 2, "base is empty"),
        (np.ones((3, 4)), np.ones((3, 5)), 2, "dimension mismatch"),
        (np.ones(4), np.ones((3, 4)), 2, "2-d array"),
        (np.ones((3, 4)), np.ones((3, 4)), 0, "k must be a positive integer"),
        (np.full((3, 4), np.nan), np.ones((3, 4)), 2, "NaN"),
        (np.array([["a", "b"]]), np.ones((3, 2)), 2, "real numbers"),
    ],
)
def test_knn_rejects_bad_input(queries: npt.ArrayLike, base: npt.ArrayLike, k: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        knn(queries, base, k)


# --------------------------------------------------------------------------- scores and strategies


@pytest.mark.parametrize("score", SCORES)
def test_scores_match_direct_numpy(score: Score) -> None:
    rng = np.random.default_rng(2)
    x, y = random_unit(rng, 9, 6), random_unit(rng, 7, 6)
    expected = direct_margin(x, y, 3, score)
    fwd, bwd = direct_candidates(x, y, 3, score)
    forward = mine(x, y, k=3, score=score, strategy="forward")
    assert sorted((s, t) for s, t, _ in forward) == list(enumerate(fwd))
    for s, t, value in forward:
        assert value == pytest.approx(expected[s, t], abs=1e-5)
    backward = mine(x, y, k=3, score=score, strategy="backward")
    assert sorted((t, s) for s, t, _ in backward) == list(enumerate(bwd))
    for s, t, value in backward:
        assert value == pytest.approx(expected[s, t], abs=1e-5)


def test_ratio_margin_by_hand() -> None:
    # One source, two targets, k=2: x's neighbourhood mean is (c0 + c1) / 2, each target's is its cosine.
    x = unit([[1.0, 0.0]])
    y = unit([[1.0, 0.2], [0.3, 1.0]])
    c = (x @ y.T)[0].astype(np.float64)
    result = mine(x, y, k=2, score="ratio", strategy="forward")
    expected = c[0] / (((c[0] + c[1]) / 2 + c[0]) / 2)
    assert result.pairs[0][:2] == (0, 0)
    assert result.pairs[0][2] == pytest.approx(expected, rel=1e-5)
    assert (result.k_source, result.k_target) == (2, 1)


def angle_points(degrees: list[float]) -> F32:
    rad = np.deg2rad(degrees)
    return unit(np.stack([np.cos(rad), np.sin(rad)], axis=1))


def test_strategies_on_a_case_known_by_construction() -> None:
    # s0 (0°) and s1 (12°) both prefer t0 (5°); t0 prefers s0; t1 (90°) prefers s1.
    x, y = angle_points([0, 12]), angle_points([5, 90])
    got = {s: as_set(mine(x, y, k=2, score="absolute", strategy=s)) for s in STRATEGIES}
    assert got["forward"] == {(0, 0), (1, 0)}
    assert got["backward"] == {(0, 0), (1, 1)}
    assert got["intersect"] == {(0, 0)}
    assert got["max"] == {(0, 0), (1, 1)}  # (1, 0) loses t0 to the better (0, 0)


@pytest.mark.parametrize("score", SCORES)
def test_strategy_semantics_on_random_data(score: Score) -> None:
    rng = np.random.default_rng(3)
    x, y = random_unit(rng, 60, 8), random_unit(rng, 45, 8)
    fwd, bwd = direct_candidates(x, y, 4, score)
    forward = set(enumerate(fwd))
    backward = {(s, t) for t, s in enumerate(bwd)}
    assert as_set(mine(x, y, score=score, strategy="forward")) == forward
    assert as_set(mine(x, y, score=score, strategy="backward")) == backward
    assert as_set(mine(x, y, score=score, strategy="intersect")) == forward & backward
    best = mine(x, y, score=score, strategy="max")
    pairs = as_set(best)
    assert pairs <= forward | backward
    assert len({s for s, _ in pairs}) == len({t for _, t in pairs}) == len(pairs)  # 1:1
    # Greedy: every candidate left out conflicts with a kept pair that scores at least as high.
    kept = {(s, t): v for s, t, v in best}
    margin = direct_margin(x, y, 4, score)
    for s, t in (forward | backward) - pairs:
        blockers = [v for (ks, kt), v in kept.items() if ks == s or kt == t]
        assert blockers and max(blockers) >= margin[s, t] - 1e-5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_results_sorted_and_threshold_filters(strategy: Strategy) -> None:
    rng = np.random.default_rng(4)
    x, y = random_unit(rng, 80, 8), random_unit(rng, 70, 8)
    everything = mine(x, y, strategy=strategy)
    assert everything.threshold is None and everything.strategy == strategy and everything.score == "ratio"
    scores = everything.scores
    assert np.all(scores[:-1] >= scores[1:])
    cut = float(np.median(scores))
    kept = mine(x, y, strategy=strategy, threshold=cut)
    assert kept.threshold == cut
    assert kept.pairs == [p for p in everything.pairs if p[2] > cut]
    assert everything.with_threshold(cut).pairs == kept.pairs
    assert len(mine(x, y, strategy=strategy, threshold=1e9)) == 0


def test_planted_translations_are_recovered_among_distractors() -> None:
    rng = np.random.default_rng(5)
    x = random_unit(rng, 400, 32)
    perm = rng.permutation(300)
    translations = unit(x[:300][perm] + 0.3 * random_unit(rng, 300, 32))  # target j translates source perm[j]
    y = np.concatenate([translations, random_unit(rng, 250, 32)])
    gold = {(int(perm[j]), j) for j in range(300)}
    result = mine(x, y)
    tuned = best_threshold(result, gold)
    assert tuned.f1 >= 0.98
    assert evaluate(result.with_threshold(tuned.threshold), gold).f1 == pytest.approx(tuned.f1)


def test_chunk_size_does_not_change_mining() -> None:
    rng = np.random.default_rng(6)
    x, y = random_unit(rng, 120), random_unit(rng, 90)
    chunked, whole = mine(x, y, chunk_size=11).pairs, mine(x, y).pairs
    # The same pairs; scores equal up to float32 rounding (BLAS sums in another order per shape).
    assert [(p[0], p[1]) for p in chunked] == [(p[0], p[1]) for p in whole]
    np.testing.assert_allclose([p[2] for p in chunked], [p[2] for p in whole], rtol=1e-6)


def test_tiny_inputs_clip_k() -> None:
    result = mine(angle_points([0]), angle_points([3, 40, 70]), k=10)
    assert result.k == 10 and (result.k_source, result.k_target) == (3, 1)
    assert as_set(result) == {(0, 0)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "best"}, "strategy must be one of forward, backward, intersect, max"),
        ({"score": "cosine"}, "score must be one of ratio, distance, absolute"),
        ({"k": 0}, "k must be a positive integer"),
        ({"chunk_size": -1}, "chunk_size must be a positive integer"),
        ({"threshold": float("nan")}, "threshold must be finite"),
        ({"threshold": "1.1"}, "threshold must be a number"),
    ],
)
def test_mine_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    x = angle_points([0, 10])
    with pytest.raises(InputError, match=message):
        mine(x, x, **kwargs)  # type: ignore[arg-type]


def test_mine_rejects_bad_embeddings() -> None:
    with pytest.raises(InputError, match="dimension mismatch"):
        mine(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(InputError, match="target is empty"):
        mine(np.ones((2, 3)), np.ones((0, 3)))


# --------------------------------------------------------------------------- thresholds


PAIRS = [(0, 0, 0.9), (1, 1, 0.8), (2, 5, 0.7), (3, 3, 0.6), (4, 6, 0.5)]
GOLD = [(0, 0), (1, 1), (3, 3), (9, 9)]  # (9, 9) was never a candidate: recall tops out at 3/4


def test_best_threshold_sweeps_midpoints() -> None:
    # Cuts after each pair give F1 .4, .667, .571, .75, .667: best after the 4th, midway to the 5th.
    best = best_threshold(PAIRS, GOLD)
    assert best.threshold == pytest.approx(0.55)
    assert (best.precision, best.recall, best.f1) == pytest.approx((0.75, 0.75, 0.75))
    assert (best.n_extracted, best.n_correct, best.n_gold) == (4, 3, 4)
    again = evaluate(PAIRS, GOLD, best.threshold)
    assert (again.precision, again.recall, again.f1) == pytest.approx((0.75, 0.75, 0.75))


def test_best_threshold_never_splits_ties_and_can_keep_everything() -> None:
    tied = [(0, 0, 0.9), (1, 7, 0.5), (2, 2, 0.5)]
    best = best_threshold(tied, [(0, 0), (2, 2)])
    # Cutting between the two 0.5s is impossible: keeping both (F1 .8) beats keeping one (.667).
    assert best.n_extracted == 3 and best.f1 == pytest.approx(0.8)
    assert best.threshold is not None and best.threshold < 0.5
    assert evaluate(tied, [(0, 0), (2, 2)], best.threshold).n_extracted == 3


def test_best_threshold_without_any_gold_candidate_keeps_nothing() -> None:
    best = best_threshold(PAIRS, [(7, 7)])
    assert best.f1 == 0.0 and best.threshold is not None
    assert evaluate(PAIRS, [(7, 7)], best.threshold).n_extracted == 0


def test_evaluate_counts_and_dedupes() -> None:
    everything = evaluate([*PAIRS, (0, 0, 0.1)], GOLD)  # a repeated pair counts once
    assert (everything.n_extracted, everything.n_correct) == (5, 3)
    assert everything.precision == pytest.approx(0.6) and everything.recall == pytest.approx(0.75)
    nothing = evaluate(PAIRS, GOLD, threshold=2.0)
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("pairs", "gold", "message"),
    [
        (PAIRS, [], "gold is empty"),
        (PAIRS, [(1, 2, 3)], "gold must be"),
        ([(1, 2)], GOLD, "triples"),
        ([(-1, 2, 0.5)], GOLD, "non-negative"),
    ],
)
def test_threshold_helpers_reject_bad_input(
    pairs: list[tuple[int, ...]], gold: list[tuple[int, ...]], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        best_threshold(pairs, gold)  # type: ignore[arg-type]


def test_score_histogram_is_printable() -> None:
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.normal(0.95, 0.02, 900), rng.normal(1.2, 0.03, 100)])
    text = score_histogram(scores, bins=12, width=30, threshold=1.1)
    lines = text.splitlines()
    assert lines[0].startswith("1000 scores")
    assert len(lines) == 13
    assert sum(int(line.split(")")[1].split()[0]) for line in lines[1:]) == 1000
    assert max(len(line.split(")")[1].split()[1]) for line in lines[1:] if "#" in line) == 30
    assert sum(line.endswith(" <") for line in lines) == 1
    assert score_histogram([]) == "(no scores)"
    rng2 = np.random.default_rng(8)
    result = mine(random_unit(rng2, 20), random_unit(rng2, 20))
    assert score_histogram(result, bins=4).startswith(f"{len(result)} scores")


# --------------------------------------------------------------------------- real model, real data

DEV = SHARED / "data" / "parallel" / "dev"
TRAIN = SHARED / "data" / "parallel"
LANGS = ("de", "fr", "ru", "zh")
N_GOLD = 200
N_DISTRACTORS = 300  # per side


def read_tsv(path: Path, limit: int) -> list[tuple[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[tuple[str, str]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2 and parts[0].strip() and parts[1].strip():
                rows.append((parts[0], parts[1]))
            if len(rows) >= limit:
                break
    return rows


def mining_task(
    lang: str, encoder: Encoder, rng: np.random.Generator
) -> tuple[MiningResult, set[tuple[int, int]]]:
    """N_GOLD dev pairs hidden among unrelated train sentences on both sides, both sides shuffled."""
    dev = read_tsv(DEV / f"{lang}-en.tsv", N_GOLD)
    train = read_tsv(TRAIN / f"{lang}-en.tsv.gz", 2 * N_DISTRACTORS)
    first, second = train[:N_DISTRACTORS], train[N_DISTRACTORS:]
    # Different line ranges per side, and no sentence whose translation is on the other side.
    dev_xx, dev_en = {x for x, _ in dev}, {e for _, e in dev}
    english_of_first = {e for _, e in first} | dev_en
    foreign_of_second = {x for x, _ in second} | dev_xx
    extra_xx = sorted({x for x, _ in first} - dev_xx - foreign_of_second)
    extra_en = sorted({e for _, e in second} - english_of_first)
    xx = [x for x, _ in dev] + extra_xx
    en = [e for _, e in dev] + extra_en
    px, pe = rng.permutation(len(xx)), rng.permutation(len(en))
    src = encoder.embed([xx[i] for i in px], kind="passage")
    tgt = encoder.embed([en[i] for i in pe], kind="passage")
    pos_x, pos_e = np.argsort(px), np.argsort(pe)  # where original line i ended up
    gold = {(int(pos_x[i]), int(pos_e[i])) for i in range(len(dev))}
    return mine(src, tgt, k=4, score="ratio", strategy="max"), gold


def split_by_source(
    result: MiningResult, gold: set[tuple[int, int]], half: int
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int]]]:
    """The pairs and gold whose source row has the given parity: a random half, as rows are shuffled."""
    return [p for p in result if p[0] % 2 == half], [g for g in gold if g[0] % 2 == half]


@pytest.mark.real_model
def test_mining_dev_bitext_among_distractors(real_encoders: dict[str, Encoder]) -> None:
    files = [DEV / f"{lang}-en.tsv" for lang in LANGS] + [TRAIN / f"{lang}-en.tsv.gz" for lang in LANGS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"parallel data not found (expected under {SHARED}): {', '.join(missing)}")
    encoder = real_encoders["onnx-int8"]
    rng = np.random.default_rng(0)
    held_out: dict[tuple[str, int], float] = {}
    for lang in LANGS:
        result, gold = mining_task(lang, encoder, rng)
        assert result.strategy == "max" and len(result) <= min(result.n_source, result.n_target)
        # Two-fold: the threshold is tuned on one half of the source sentences, applied to the other.
        for half in (0, 1):
            tuned = best_threshold(*split_by_source(result, gold, half))
            pairs, held_gold = split_by_source(result, gold, 1 - half)
            held_out[lang, half] = evaluate(pairs, held_gold, tuned.threshold).f1
    # Measured (int8, seed 0): de .97/.97, fr .98/.97, ru .97/.94, zh .92/.89; zh is this small
    # model's weakest of the four, hence the per-fold floor below the 0.9 asked of the average.
    assert np.mean(list(held_out.values())) >= 0.9, held_out
    assert min(held_out.values()) >= 0.85, held_out
