"""The split: disjoint, complete, deterministic, and no row ever moves when data is appended."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from core.params import SplitParams
from pipeline.stages.split import in_test, split_frame

ids = st.lists(st.text(min_size=1, max_size=16), unique=True, max_size=300)
fractions = st.floats(min_value=0.05, max_value=0.95)
salts = st.text(min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(row_ids=ids, fraction=fractions, salt=salts)
def test_split_is_disjoint_and_covers_every_row(row_ids: list[str], fraction: float, salt: str) -> None:
    frame = pd.DataFrame({"row_id": row_ids, "x": range(len(row_ids))})
    train, test = split_frame(frame, SplitParams(test_fraction=fraction, salt=salt))
    assert set(train["row_id"]).isdisjoint(test["row_id"])
    assert set(train["row_id"]) | set(test["row_id"]) == set(row_ids)
    assert len(train) + len(test) == len(row_ids)


@settings(max_examples=50, deadline=None)
@given(old=ids, new=ids, fraction=fractions, salt=salts)
def test_appending_rows_never_moves_an_existing_row(
    old: list[str], new: list[str], fraction: float, salt: str
) -> None:
    params = SplitParams(test_fraction=fraction, salt=salt)
    appended = old + [i for i in new if i not in set(old)]
    before = in_test(pd.Series(old, dtype=object), params)
    after = in_test(pd.Series(appended, dtype=object), params)
    assert list(after[: len(old)]) == list(before)


@settings(max_examples=20, deadline=None)
@given(fraction=fractions, salt=salts)
def test_holdout_share_is_close_to_the_fraction(fraction: float, salt: str) -> None:
    row_ids = pd.Series([f"C{i}" for i in range(5000)])
    share = in_test(row_ids, SplitParams(test_fraction=fraction, salt=salt)).mean()
    assert abs(share - fraction) < 0.035


def test_order_of_rows_does_not_matter() -> None:
    params = SplitParams(test_fraction=0.3, salt="s")
    row_ids = pd.Series([f"id{i}" for i in range(500)])
    forward = dict(zip(row_ids, in_test(row_ids, params), strict=True))
    reverse = row_ids[::-1].reset_index(drop=True)
    assert dict(zip(reverse, in_test(reverse, params), strict=True)) == forward
