"""Agreement statistics against published reference values (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import jupyter_localllm as ll
from jupyter_localllm.errors import InvalidParameterError


def test_cohen_kappa_textbook_example():
    # Two readers, 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
    # p_o = 0.70, p_e = 0.50, kappa = 0.40 (the standard worked example of Cohen's kappa).
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    table = ll.intercoder_reliability(pd.DataFrame({"A": a, "B": b}), method="cohen")
    row = table.iloc[0]
    assert (row.model_a, row.model_b, row.n) == ("A", "B", 50)
    assert row.observed == pytest.approx(0.70)
    assert row.expected == pytest.approx(0.50)
    assert row.kappa == pytest.approx(0.40)


def test_krippendorff_alpha_reference_data():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders x 12
    # units example with missing values; R irr::kripp.alpha(method="nominal") gives 0.743.
    nan = np.nan
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ]
    wide = pd.DataFrame(np.array(data).T, columns=["A", "B", "C", "D"])
    res = ll.intercoder_reliability(wide)  # auto: 4 coders -> krippendorff
    assert res.level == "nominal"
    assert res.alpha == pytest.approx(0.743, abs=5e-4)
    assert list(res.items.n_coders[:3]) == [3, 4, 4]
    assert res.items.agree.sum() == 9  # units whose coders all agree (one coder counts)


def test_long_format_confusion_and_validate():
    long = pd.DataFrame(
        {
            "sample_id": [1, 2, 3, 4] * 2,
            "model_id": ["m1"] * 4 + ["m2"] * 4,
            "label": ["a", "b", "a", "b", "a", "a", "a", "b"],
            "truth": ["a", "b", "b", "b"] * 2,
        }
    )
    cm = ll.compute_confusion_matrices(long)
    assert cm["vs_gold"]["m1"].loc["b", "a"] == 1
    assert cm["vs_gold"]["m2"].to_numpy().tolist() == [[1, 0], [2, 1]]
    assert cm["pairwise"][("m1", "m2")].to_numpy().trace() == 3
    report = ll.validate(long)
    acc = dict(zip(report.metrics.model, report.metrics.accuracy, strict=True))
    assert acc == {"m1": 0.75, "m2": 0.5}
    assert math.isclose(report.reliability.kappa.iloc[0], 0.5)
    assert "Accuracy against gold" in report._repr_html_()


def test_bad_method_and_single_coder():
    with pytest.raises(InvalidParameterError, match='method must be "auto"'):
        ll.intercoder_reliability(pd.DataFrame({"a": [1], "b": [1]}), method="fleiss")
    with pytest.raises(InvalidParameterError, match="at least two coders"):
        ll.intercoder_reliability(pd.DataFrame({"a": [1, 2]}))
