"""Small demo data sets, and a helper to load your own CSV files.

``news_sample()`` returns 120 short news items in four classes, for trying prompts, comparing
models and checking accuracy with :func:`jupyter_localllm.validate` without downloading anything.
Every item was written for this project: the stories, places and people are fictional, though
realistic, and none is copied from a real article or from a published corpus such as AG News.
The data ships inside the package and is licensed with it, under the MIT licence.

Example::

    from jupyter_localllm import datasets

    df = datasets.news_sample()
    df.groupby("class", observed=True).size()   # 30 items in each class
"""

from __future__ import annotations

import functools
import os
from importlib import resources

import pandas as pd

from ..errors import InvalidParameterError

__all__ = ["NEWS_CLASSES", "load_csv", "news_sample"]

NEWS_CLASSES: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
"""The four labels of :func:`news_sample`, in the order of its ``class`` categories."""

_NEWS_FILE = "news_sample.csv"


@functools.lru_cache(maxsize=1)
def _read_news() -> pd.DataFrame:
    """Parse the packaged CSV once; callers get copies."""
    with resources.files(__name__).joinpath(_NEWS_FILE).open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    df["class"] = pd.Categorical(df["class"], categories=list(NEWS_CLASSES))
    return df


def news_sample() -> pd.DataFrame:
    """Return 120 project-written news items, 30 in each of four classes.

    Columns:

    - ``class``: the gold label, a pandas ``Categorical`` with the categories
      ``World``, ``Sports``, ``Business``, ``Sci/Tech`` in that order (see :data:`NEWS_CLASSES`).
    - ``title``: a headline of 5 to 12 words.
    - ``description``: one or two sentences (20 to 45 words) telling the story.

    Rows are in a fixed, mixed order, so ``df.head(n)`` shows several classes. Most items are
    clear-cut; a few sit near a class boundary (a chipmaker's earnings, a cloud outage, a stadium
    funding vote), as in real news feeds.

    The text was written for jupyter-localllm; it is fictional, copies no real article, and is
    licensed with the project under the MIT licence.

    Each call returns a new DataFrame, so changing it does not affect later calls.
    """
    return _read_news().copy(deep=True)


def load_csv(
    path: str | os.PathLike[str],
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    **read_csv_kwargs: object,
) -> pd.DataFrame:
    """Read a CSV file with pandas and check that the columns you will use are there.

    Parameters
    ----------
    path:
        The CSV file.
    text_column:
        If given, the column holding the texts to annotate; it must exist in the file.
    label_column:
        If given, the column holding gold labels (for ``validate``); it must exist in the file.
    encoding:
        The file's text encoding, UTF-8 by default.
    **read_csv_kwargs:
        Passed on to :func:`pandas.read_csv` (``sep``, ``usecols``, ``nrows``, ...).

    Returns
    -------
    pandas.DataFrame
        The file's contents, as :func:`pandas.read_csv` parses them.

    Raises
    ------
    InvalidParameterError
        When ``text_column`` or ``label_column`` names a column the file lacks; the message
        lists the columns it has, e.g. ``Column 'x' not found in data.csv; columns are a, b.``
    FileNotFoundError
        When ``path`` does not exist.
    """
    df = pd.read_csv(path, encoding=encoding, **read_csv_kwargs)  # type: ignore[arg-type]
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        if column is not None and column not in df.columns:
            columns = ", ".join(str(c) for c in df.columns) or "(none)"
            raise InvalidParameterError(
                f"Column {column!r} not found in {os.path.basename(os.fspath(path))}; "
                f"columns are {columns}. Pass one of them as {role}."
            )
    return df
