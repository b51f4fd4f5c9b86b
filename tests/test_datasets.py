"""The packaged news sample and the CSV loader."""

from __future__ import annotations

import pandas as pd
import pytest

from jupyter_localllm import datasets
from jupyter_localllm.errors import InvalidParameterError, LocalLLMError


def test_news_sample_has_120_balanced_rows():
    df = datasets.news_sample()
    assert len(df) == 120
    assert list(df.columns) == ["class", "title", "description"]
    assert df["class"].value_counts().to_dict() == dict.fromkeys(datasets.NEWS_CLASSES, 30)


def test_news_sample_class_is_categorical_in_documented_order():
    df = datasets.news_sample()
    assert isinstance(df["class"].dtype, pd.CategoricalDtype)
    assert tuple(df["class"].cat.categories) == datasets.NEWS_CLASSES
    assert datasets.NEWS_CLASSES == ("World", "Sports", "Business", "Sci/Tech")
    assert df["class"].notna().all()


def test_news_sample_has_no_empty_cells_or_duplicates():
    df = datasets.news_sample()
    for column in ("title", "description"):
        text = df[column].astype(str).str.strip()
        assert (text != "").all(), column
        assert not df[column].duplicated().any(), column
    assert not df.isna().any().any()


def test_news_sample_items_have_documented_lengths():
    df = datasets.news_sample()
    title_words = df["title"].str.split().str.len()
    description_words = df["description"].str.split().str.len()
    assert title_words.between(5, 12).all()
    assert description_words.between(20, 45).all()


def test_news_sample_keeps_non_ascii_text():
    text = " ".join(datasets.news_sample()["description"])
    assert "Zürich" in text


def test_news_sample_returns_a_fresh_copy():
    first = datasets.news_sample()
    first.loc[0, "title"] = "changed"
    del first["description"]
    second = datasets.news_sample()
    assert second.loc[0, "title"] != "changed"
    assert "description" in second.columns
    assert first is not second


def test_all_is_sorted_and_documented():
    assert datasets.__all__ == sorted(datasets.__all__)
    for name in ("news_sample", "load_csv"):
        assert getattr(datasets, name).__doc__


@pytest.fixture
def data_csv(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('a,b,c\nhello,World,1\n"x, y",Sports,2\n', encoding="utf-8")
    return path


def test_load_csv_reads_the_file(data_csv):
    df = datasets.load_csv(data_csv, text_column="a", label_column="b")
    assert list(df.columns) == ["a", "b", "c"]
    assert df["a"].tolist() == ["hello", "x, y"]


def test_load_csv_passes_read_csv_options(data_csv):
    df = datasets.load_csv(str(data_csv), text_column="a", usecols=["a", "b"], nrows=1)
    assert df.shape == (1, 2)


@pytest.mark.parametrize("option", ["text_column", "label_column"])
def test_load_csv_names_a_missing_column_and_the_ones_present(data_csv, option):
    with pytest.raises(InvalidParameterError) as info:
        datasets.load_csv(data_csv, **{option: "x"})
    message = str(info.value)
    assert message.startswith("Column 'x' not found in data.csv; columns are a, b, c.")
    assert option in message
    assert isinstance(info.value, LocalLLMError)
    assert isinstance(info.value, ValueError)


def test_load_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.load_csv(tmp_path / "nope.csv")
