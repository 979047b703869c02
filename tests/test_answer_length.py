"""A score gain from shorter answers is named as such: token F1 pays for precision, so an answer that drops its
padding scores higher without recalling one more fact."""
import pandas as pd

from pastkit.evaluation import length_note, summarize


def answers(past_prediction: str, past_contains: float) -> pd.DataFrame:
    """Eight documents of four questions; the baseline pads every answer, PaST gives `past_prediction`."""
    rows = []
    for d in range(8):
        for q in range(4):
            item = {"seed": 0, "item": f"{d}:{q}", "document": d, "exact": 0.0}
            rows.append({**item, "method": "Target SFT", "prediction": "the answer is Paris, a city in France",
                         "score": 0.25 + 0.01 * q, "contains": 0.5})
            rows.append({**item, "method": "PaST", "prediction": past_prediction, "score": 0.6 + 0.01 * d,
                         "contains": past_contains})
    return pd.DataFrame(rows)


def test_a_table_states_how_many_words_each_methods_answers_have():
    table = summarize(answers("Paris", 0.5), "Target SFT", metrics=("score", "contains")).set_index("method")
    assert table.loc["Target SFT", "words"] == 8 and table.loc["PaST", "words"] == 1


def test_a_gain_with_shorter_answers_and_the_same_facts_is_called_a_change_of_form():
    table = summarize(answers("Paris", 0.5), "Target SFT", metrics=("score", "contains"))
    note = length_note(table, "Target SFT")
    assert "PaST answers in 1.0 words against 8.0" in note and "not in facts recalled" in note


def test_a_gain_that_also_recalls_more_facts_is_not_called_a_change_of_form():
    table = summarize(answers("Paris", 1.0), "Target SFT", metrics=("score", "contains"))
    note = length_note(table, "Target SFT")
    assert "more facts are recalled" in note and "not in facts recalled" not in note


def test_no_gain_no_note():
    frame = answers("Paris", 0.5)
    frame.loc[frame.method == "PaST", "score"] = frame.loc[frame.method == "Target SFT", "score"].values
    assert length_note(summarize(frame, "Target SFT", metrics=("score", "contains")), "Target SFT") == ""
