"""The boundary baseline: a regressor on how far contours lie from the image's edges, with no network, ranks
candidates and predicts their Dice on a case it was not fitted on better than the training mean does."""

import numpy as np
from scipy import stats

from contourqa.training.boundary_baseline import feature_table, fit


def test_fitted_on_one_phantom_case_it_predicts_the_other_better_than_the_mean(phantom):
    dice, features, cases = feature_table(phantom / "manifest.csv", None)
    cases = np.array(cases)
    assert set(cases) == {"case000", "case001"} and features.shape == (len(dice), 18)
    assert stats.spearmanr(features[:, 0], dice).statistic < -0.6  # the boundary error falls as Dice rises
    for train, test in (("case000", "case001"), ("case001", "case000")):
        fitted, held_out = cases == train, cases == test
        predicted = np.clip(fit(dice[fitted], features[fitted]).predict(features[held_out]), 0, 1)
        naive = np.abs(dice[fitted].mean() - dice[held_out]).mean()
        assert np.abs(predicted - dice[held_out]).mean() < 0.75 * naive, (train, test)
