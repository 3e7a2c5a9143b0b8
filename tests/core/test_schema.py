"""Cleaning and typing raw cells: idempotent, and messy spellings of numbers and blanks work."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.pandas import column, data_frames

from core.params import DataParams
from core.schema import MISSING_TOKENS, coerce, infer_schema, normalise_labels, normalise_missing, row_ids

cells = st.one_of(
    st.sampled_from([*sorted(MISSING_TOKENS), " 1.5 ", "abc", "  x", "NA ", "3"]), st.text(max_size=6)
)


@settings(max_examples=60, deadline=None)
@given(
    frame=data_frames([column("a", elements=cells, dtype=object), column("b", elements=cells, dtype=object)])
)
def test_normalise_missing_is_idempotent(frame: pd.DataFrame) -> None:
    once = normalise_missing(frame)
    pd.testing.assert_frame_equal(normalise_missing(once), once)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=20, max_size=60),
    blank=st.sampled_from(["", " ", "NA", "null", "?"]),
)
def test_numbers_written_as_text_with_blanks_become_numeric(values: list[float], blank: str) -> None:
    assume(len(set(values)) > 1)  # a column of one value is left out of the features
    text = [f" {v!r} " for v in values] + [blank]
    frame = normalise_missing(
        pd.DataFrame({"x": text, "y": ["a", "b"] * (len(text) // 2) + ["a"] * (len(text) % 2)})
    )
    schema = infer_schema(frame, DataParams(target="y", task="classification"))
    assert schema.features[0].kind == "numeric"
    typed, invalid = coerce(frame, schema)
    assert invalid == {}
    np.testing.assert_allclose(
        typed["x"].iloc[:-1].to_numpy(), np.asarray(values, dtype=np.float32).astype(float), rtol=1e-6
    )
    assert np.isnan(typed["x"].iloc[-1])


def test_garbage_in_a_numeric_column_is_reported_with_the_column() -> None:
    frame = normalise_missing(
        pd.DataFrame({"x": [str(i) for i in range(40)] + ["oops"], "y": ["a", "b"] * 20 + ["a"]})
    )
    schema = infer_schema(frame, DataParams(target="y", task="classification"))
    _, invalid = coerce(frame, schema)
    assert invalid == {"x": ["oops"]}


def test_unique_text_column_is_taken_as_the_row_id() -> None:
    frame = pd.DataFrame({"cid": [f"K-{i:04d}" for i in range(50)], "x": range(50), "y": [0, 1] * 25})
    schema = infer_schema(frame, DataParams(target="y", task="classification"))
    assert schema.id_column == "cid"
    assert schema.feature_names == ["x"]


def test_string_and_numeric_labels_are_normalised() -> None:
    yes_no = normalise_labels(pd.Series([" Yes", "No ", "Yes"]).str.strip(), "classification")
    assert list(yes_no) == ["Yes", "No", "Yes"]
    numeric_text = normalise_labels(pd.Series(["1", "0", "1"]), "classification")
    assert numeric_text.dtype == np.int64
    assert list(numeric_text) == [1, 0, 1]


@settings(max_examples=40, deadline=None)
@given(frame=data_frames([column("a", dtype=int), column("b", elements=st.text(max_size=4), dtype=object)]))
def test_row_ids_depend_only_on_the_row(frame: pd.DataFrame) -> None:
    forward = row_ids(frame, None)
    shuffled = frame.iloc[::-1]
    assert list(row_ids(shuffled, None)) == list(forward.iloc[::-1])
