"""The input contract: what passes, and the message each bad value gets."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipe.contract import InputContract, InputError
from mlpipe.errors import UserError

CONTRACT = InputContract(("a", "b"), ("double", "double"))


def problems(call, *args):
    with pytest.raises(InputError) as info:
        call(*args)
    return [(p.row, p.field, p.message) for p in info.value.problems], info.value


def test_records_become_a_matrix_in_signature_order():
    matrix = CONTRACT.matrix_from_records([{"b": 2, "a": 1.5}, {"a": -3, "b": 0.25}])
    assert matrix.dtype == np.float64
    assert matrix.tolist() == [[1.5, 2.0], [-3.0, 0.25]]


def test_columns_and_rows_give_the_same_matrix():
    expected = [[1.0, 2.0], [3.0, 4.0]]
    assert CONTRACT.matrix_from_columns({"a": [1, 3], "b": [2, 4]}).tolist() == expected
    assert CONTRACT.matrix_from_rows(["b", "a"], [[2, 1], [4, 3]]).tolist() == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1.5", "is a string ('1.5')"),
        (None, "is null"),
        (True, "is a boolean"),
        (float("nan"), "NaN and Infinity are not accepted"),
        (float("inf"), "NaN and Infinity are not accepted"),
        ("NaN", "is the string 'NaN'"),
        ("-Infinity", "is the string '-Infinity'"),
        ([1], "is a list"),
        ({"x": 1}, "is an object"),
        (10**400, "too large"),
    ],
)
def test_each_bad_value_is_named_with_its_row_and_field(value, words):
    found, error = problems(CONTRACT.matrix_from_records, [{"a": 1, "b": 2}, {"a": 1, "b": value}])
    assert len(found) == 1
    row, field, message = found[0]
    assert (row, field) == (1, "b")
    assert words in message
    assert error.status == 422
    assert "row 1 field 'b'" in str(error)


def test_missing_and_unknown_features():
    found, _ = problems(CONTRACT.matrix_from_records, [{"a": 1, "c": 3}])
    assert (0, "b", "missing feature") in found
    assert any(f == "c" and "unknown feature; the model takes a, b" in m for _, f, m in found)


@pytest.mark.parametrize(
    ("payload", "words"),
    [([], "no rows"), ({"a": 1}, "expected a list of records"), ("x", "got a string")],
)
def test_not_a_list_of_records(payload, words):
    found, _ = problems(CONTRACT.matrix_from_records, payload)
    assert words in found[0][2]


def test_a_row_that_is_not_an_object():
    found, _ = problems(CONTRACT.matrix_from_records, [{"a": 1, "b": 2}, [1, 2]])
    assert found == [(1, None, "expected an object of features, got a list")]


def test_rows_of_the_wrong_width_and_ragged_columns():
    found, _ = problems(CONTRACT.matrix_from_rows, ["a", "b"], [[1, 2], [1]])
    assert found[0][0] == 1 and "expected a list of 2 values" in found[0][2]
    found, _ = problems(CONTRACT.matrix_from_columns, {"a": [1, 2], "b": [1]})
    assert "different lengths" in found[0][2]


def test_problems_are_capped():
    _, error = problems(CONTRACT.matrix_from_records, [{"a": "x", "b": "y"}] * 500)
    assert len(error.problems) == 20
    assert "more" in str(error)


@pytest.mark.parametrize("kind", ["long", "integer"])
def test_integer_columns_take_integers_and_integral_floats(kind):
    contract = InputContract(("x", "n"), ("double", kind))
    assert contract.matrix_from_records([{"x": 0.5, "n": 3}]).tolist() == [[0.5, 3.0]]
    # 3.0 is what a CSV cell or a float64 column holds: the same row, the same matrix
    assert contract.matrix_from_records([{"x": 0.5, "n": 3.0}]).tolist() == [[0.5, 3.0]]
    assert contract.matrix_from_rows(["x", "n"], [[0.5, 3.0], [1, -2]]).tolist() == [
        [0.5, 3.0],
        [1.0, -2.0],
    ]
    found, _ = problems(contract.matrix_from_records, [{"x": 0.5, "n": 3.0}, {"x": 1, "n": 2.5}])
    assert found == [(1, "n", "is 2.5; an integer is required")]


def test_non_numeric_signatures_are_refused():
    with pytest.raises(UserError, match="whose inputs are numeric"):
        InputContract(("s",), ("string",))
    with pytest.raises(UserError, match="no named input columns"):
        InputContract.from_signature_inputs([{"type": "tensor"}])


def test_without_pyarrow_a_parquet_body_is_a_415_that_names_what_to_send(monkeypatch):
    """The serving image has no pyarrow: its /invocations answers a Parquet body with 415."""
    import sys

    from mlpipe.serve import protocol

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails, as if absent
    contract = InputContract(("a",), ("double",))
    with pytest.raises(InputError) as raised:
        protocol.invocations_matrix(b"PAR1", protocol.PARQUET_TYPE, contract, 10)
    assert raised.value.status == 415
    assert "application/json" in str(raised.value) and "text/csv" in str(raised.value)


# A model of a table with categories: city (string, may be missing), zone (integer-coded),
# flag (boolean), x (a number that may be missing)
TABLE = InputContract(
    ("city", "zone", "flag", "x"),
    ("string", "long", "boolean", "double"),
    optional=frozenset({"city", "x"}),
    categories={"city": ("lima", "oslo", "paris"), "zone": ("1", "3", "4")},
)


def test_categories_become_codes_unseen_ones_the_last_and_missing_nan():
    matrix = TABLE.matrix_from_records(
        [
            {"city": "paris", "zone": 3, "flag": True, "x": 0.5},
            {"city": "tokyo", "zone": 9, "flag": False, "x": None},
            {"city": None, "zone": 4.0, "flag": True, "x": float("nan")},
        ]
    )
    assert matrix[0].tolist() == [2.0, 1.0, 1.0, 0.5]
    assert matrix[1].tolist()[:3] == [3.0, 3.0, 0.0] and np.isnan(matrix[1, 3])
    assert np.isnan(matrix[2, 0]) and matrix[2, 1] == 2.0 and np.isnan(matrix[2, 3])
    assert TABLE.unseen(matrix) == {"city": 1, "zone": 1}
    assert TABLE.missing(matrix) == {"city": 1, "x": 2}
    frame = TABLE.frame(matrix)
    assert frame["city"].tolist()[:2] == ["paris", "\x00unseen"] and np.isnan(frame["city"][2])
    assert frame["zone"].tolist() == ["3", "\x00unseen", "4"]


NONE_MISSING = "(the model was trained with none missing)"


def test_what_a_table_contract_refuses_is_named_row_and_field():
    found, error = problems(
        TABLE.matrix_from_records,
        [
            {"city": 3, "zone": "a", "flag": 1, "x": "z"},
            {"city": "oslo", "zone": None, "flag": None, "x": float("inf")},
        ],
    )
    assert error.status == 422
    assert found == [
        (0, "city", "is a number (3); a category (a string) is required"),
        (0, "zone", 'is a string ("a"); an integer code is required'),
        (0, "flag", "is a number (1); true or false is required"),
        (0, "x", "is a string ('z'); a number is required"),
        (1, "zone", f"is null; an integer code is required {NONE_MISSING}"),
        (1, "flag", f"is null; true or false is required {NONE_MISSING}"),
        (1, "x", "is inf; NaN and Infinity are not accepted"),
    ]  # fmt: skip


def test_a_batch_of_columns_takes_codes_and_missing_values_where_optional():
    from mlpipe.contract import ColumnValues

    city = TABLE.codes("city", np.array(["paris", None, "tokyo", ""], dtype=object))
    zone = TABLE.codes("zone", np.array([3, 4, 1, 7]))
    assert city.tolist()[0] == 2.0 and np.isnan(city[1]) and city[2] == 3.0 and np.isnan(city[3])
    assert zone.tolist() == [1.0, 2.0, 0.0, 3.0]
    x = np.array([0.5, np.nan, np.nan, 1.0])
    columns = ColumnValues(
        [city, zone, np.array([1.0, 0.0, 1.0, 0.0]), x],
        [None, None, None, None],
        [None, None, None, np.array(["0.5", "", "abc", "1"], dtype=object)],
    )
    matrix, valid, reasons = TABLE.check_columns(columns)
    assert valid.tolist() == [True, True, False, True]  # only the text that is no number
    assert np.isnan(matrix[3, 0]) and matrix[3, 1:].tolist() == [3.0, 0.0, 1.0]  # "": missing
    assert reasons == ["field 'x' is a string ('abc'); a number is required"]
    required = InputContract(("city",), ("string",), categories={"city": ("a", "b")})
    _, valid, reasons = required.check_columns(
        ColumnValues([required.codes("city", np.array(["a", None], dtype=object))], [None], [None])
    )
    assert valid.tolist() == [True, False]
    assert reasons == ["field 'city' is empty (null); a category (a string) is required"]


def test_a_csv_read_as_text_codes_integer_categories_as_the_server_does():
    import pyarrow as pa

    from mlpipe.batch.files import feature_values
    from mlpipe.serve import protocol

    # a CSV's features arrive as text (Arrow's reader, column_types=string)
    batch = pa.RecordBatch.from_pydict(
        {
            "city": pa.array(["paris", None, "tokyo", "oslo"]),
            "zone": pa.array(["3", "3.0", "9", "a"]),
            "flag": pa.array(["true", "0", "1", "false"]),
            "x": pa.array(["0.5", None, "1", "2"]),
        }
    )
    matrix, valid, reasons = TABLE.check_columns(feature_values(batch, TABLE))
    assert matrix[:3, 1].tolist() == [1.0, 1.0, 3.0]  # "3.0" is the category "3"; 9 is unseen
    assert valid.tolist() == [True, True, True, False]
    assert reasons == ["field 'zone' is a string ('a'); an integer code is required"]
    served = protocol.invocations_matrix(
        b"city,zone,flag,x\nparis,3,true,0.5\n,3.0,0,\ntokyo,9,1,1\n", protocol.CSV_TYPE, TABLE, 10
    )
    np.testing.assert_array_equal(served, matrix[:3])
