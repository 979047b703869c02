"""The minimum detectable effect a results table states: the closed form on a known case, and that an effect of
that size is detected about 80 % of the time."""

import numpy as np

from pastkit.evaluation import against_paper, minimum_detectable_effect


def test_mde_of_one_item_per_document_is_the_paired_t_formula():
    diffs = np.array([0.3, -0.1, 0.2, 0.0, 0.5, -0.2, 0.1, 0.4, 0.0, 0.1])
    se = diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert np.isclose(minimum_detectable_effect(diffs), (2.262 + 0.883) * se)  # t.975 and t.80 at 9 df


def test_mde_resamples_documents_not_items():
    """Ten documents of five identical items each carry the information of ten items, not fifty."""
    per_doc = np.array([0.3, -0.1, 0.2, 0.0, 0.5, -0.2, 0.1, 0.4, 0.0, 0.1])
    clustered = minimum_detectable_effect(np.repeat(per_doc, 5), np.repeat(np.arange(10), 5))
    assert np.isclose(clustered, minimum_detectable_effect(per_doc))
    assert clustered > minimum_detectable_effect(np.repeat(per_doc, 5))  # as if the 50 items were independent


def test_mde_is_undefined_below_two_documents_or_without_spread():
    assert np.isnan(minimum_detectable_effect([0.1, 0.2], ["a", "a"]))
    assert np.isnan(minimum_detectable_effect([0.0] * 12, np.repeat(range(4), 3)))  # both models 0 everywhere


def test_an_effect_the_size_of_the_mde_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, sigma = 20, 1.0
    effect = (2.093 + 0.861) * sigma / np.sqrt(n)  # the MDE at the population's spread, 19 df
    x = rng.normal(effect, sigma, size=(4000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n))
    power = float((np.abs(t) > 2.093).mean())
    assert 0.75 < power < 0.85
    sample_mdes = [minimum_detectable_effect(row) for row in x[:200]]
    assert 0.85 * effect < np.median(sample_mdes) < 1.15 * effect  # the estimate from one sample is near it


def test_every_results_table_row_states_its_mde_against_the_baseline():
    import pandas as pd

    from pastkit.evaluation import summarize

    rng = np.random.default_rng(1)
    rows = [{"method": m, "seed": 0, "item": f"{d}:{q}", "document": d, "score": float(rng.random() < p),
             "contains": float(rng.random() < p / 2)}
            for m, p in (("Target SFT", 0.3), ("PaST", 0.4)) for d in range(8) for q in range(4)]
    table = summarize(pd.DataFrame(rows), baseline="Target SFT", metrics=("score", "contains"))
    past = table.set_index("method").loc["PaST"]
    answers = pd.DataFrame(rows)
    diffs = (answers[answers.method == "PaST"].score.values - answers[answers.method == "Target SFT"].score.values)
    assert np.isclose(past["mde"], round(100 * minimum_detectable_effect(diffs, np.repeat(range(8), 4)), 2))
    assert past["contains_mde"] > 0 and np.isnan(table.set_index("method").loc["Target SFT", "mde"])


def test_the_words_beside_the_papers_effect_follow_the_interval_and_the_mde():
    """The paper's effect above, inside or below this run's interval, and an evaluation too small to see it."""
    assert "rules out" in against_paper(3.4, 1.0, 5.6, 3.7, 8.3)
    assert "could have seen" in against_paper(3.4, 1.0, 5.6, 3.7, 8.3)
    assert "neither confirms nor rules it out" in against_paper(2.8, -1.0, 12.0, 14.3, 10.3)
    assert "too small to see" in against_paper(2.8, -1.0, 12.0, 14.3, 10.3)
    assert "larger than the paper's" in against_paper(20.0, 15.0, 25.0, 5.0, 10.3)
    assert "no spread" in against_paper(0.0, 0.0, 0.0, float("nan"), 10.3)
