"""FID, KID and precision/recall on feature arrays with known answers."""

import numpy as np
import pytest
import scipy.linalg

from dlu.metrics import sample_quality as sq


def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(500, 16))
  assert abs(sq.fid(x, x)) < 1e-6


def test_frechet_distance_closed_form_for_diagonal_gaussians():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  v1, v2 = np.array([1.0, 4.0, 0.5]), np.array([9.0, 1.0, 0.5])
  # ||mu1 - mu2||^2 + sum(v1 + v2 - 2 sqrt(v1 v2)) = 5 + (4 + 1 + 0).
  got = sq.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  np.testing.assert_allclose(got, 10.0, rtol=1e-10)


def test_frechet_distance_matches_general_matrix_sqrt():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  expected = (
    np.sum((mu1 - mu2) ** 2)
    + np.trace(s1 + s2)
    - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
  )
  np.testing.assert_allclose(sq.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)


def test_fid_between_two_sampled_gaussians_approaches_the_closed_form():
  rng = np.random.default_rng(2)
  n = 200_000
  x = rng.normal(size=(n, 2)) * [1.0, 2.0]
  y = rng.normal(size=(n, 2)) * [3.0, 1.0] + [1.0, -1.0]
  closed = 2.0 + (1 + 9 - 2 * 3) + (4 + 1 - 2 * 2)  # 2 + 4 + 1
  np.testing.assert_allclose(sq.fid(x, y), closed, rtol=0.02)


def test_kid_is_unbiased_on_equal_distributions():
  rng = np.random.default_rng(3)
  unbiased, biased = [], []
  for _ in range(300):
    x, y = rng.normal(size=(2, 10, 4))
    unbiased.append(sq.kid(x, y))
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())  # V-statistic
  sem = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 3 * sem
  # The plug-in estimate on the same draws is clearly positive: the test can tell the two apart.
  assert np.mean(biased) > 10 * sem


def test_kid_grows_with_a_mean_shift():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(400, 4))
  near, far = rng.normal(size=(400, 4)) + 0.3, rng.normal(size=(400, 4)) + 1.0
  assert 0 < sq.kid(x, near) < sq.kid(x, far)


def test_knn_radii_by_hand():
  x = np.array([[0.0], [1.0], [3.0], [7.0]])
  # 2nd nearest other point: 0 -> 3 (dist 3), 1 -> 3 (2), 3 -> 0 (3), 7 -> 1 (6); squared.
  np.testing.assert_allclose(sq.knn_radii(x, k=2), [9.0, 4.0, 9.0, 36.0])


def test_precision_recall_by_hand():
  real = np.array([[0.0], [1.0], [2.0], [3.0]])  # 1st-NN radius 1 around each
  fake = np.array([[0.5], [2.5], [10.0], [10.2]])  # two inside the real manifold, two far out
  precision, recall = sq.precision_recall(real, fake, k=1)
  assert precision == 0.5
  # Fake radii (1st NN): 0.5 -> 2, 2.5 -> 2, 10 -> 0.2, 10.2 -> 0.2; every real point is covered.
  assert recall == 1.0


def test_precision_recall_of_identical_and_of_collapsed_sets():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(600, 8))
  assert sq.precision_recall(real, real.copy()) == (1.0, 1.0)
  collapsed = real[np.linalg.norm(real - real[0], axis=1).argsort()[:60]]  # one small region
  precision, recall = sq.precision_recall(real, collapsed)
  assert precision > 0.9 and recall < 0.3


def test_blocked_computations_match_unblocked(monkeypatch):
  rng = np.random.default_rng(6)
  real, fake = rng.normal(size=(70, 3)), rng.normal(size=(50, 3)) + 0.2
  full = sq.all_metrics(real, fake)
  monkeypatch.setattr(sq, "BLOCK", 16)
  blocked = sq.all_metrics(real, fake)
  for name in ("fid", "kid", "precision", "recall"):
    np.testing.assert_allclose(blocked[name], full[name], rtol=1e-10)


def test_score_takes_any_feature_function():
  rng = np.random.default_rng(7)
  real = rng.uniform(size=(300, 4, 4, 1))
  flatten = lambda x: x.reshape(len(x), -1)
  same = sq.score(flatten, real, real.copy(), batch_size=64)
  assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
  darker = sq.score(flatten, real, real * 0.5, batch_size=64)
  assert darker["fid"] > 0.5 and darker["kid"] > 0


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"expected features \[N >= 2, D\]"):
    sq.fid(np.zeros(5), np.zeros((5, 2)))
