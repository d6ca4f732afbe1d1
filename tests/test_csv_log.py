import math

import pytest

from edge_infer.errors import LogError
from edge_infer.io import read_log


def write(tmp_path, text, name="log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_columns_labels_and_keeps_nan(tmp_path):
    log = read_log(write(tmp_path, "t,a,b,label\n0.0,1,2,x\n0.1,nan,4,y\n"))
    assert log.channels == ["a", "b"] and log.labels == ["x", "y"]
    assert log.t.tolist() == [0.0, 0.1]
    assert log.values[0].tolist() == [1.0, 2.0] and math.isnan(log.values[1, 0])
    assert log.bad_rows == []


def test_label_column_is_optional_and_may_be_anywhere(tmp_path):
    log = read_log(write(tmp_path, "label,t,a\nx,0,1\n"))
    assert log.channels == ["a"] and log.labels == ["x"]
    assert read_log(write(tmp_path, "t,a\n0,1\n")).labels is None


def test_bad_rows_are_skipped_with_their_line_numbers(tmp_path):
    text = "t,a,b\n0,1,2\n0.1,1\n0.2,x,2\nzz,1,2\n0.3,1,2,9\n0.4,3,4\n"
    log = read_log(write(tmp_path, text))
    assert log.t.tolist() == [0.0, 0.4]
    assert [line for line, _ in log.bad_rows] == [3, 4, 5, 6]


def test_strict_mode_fails_on_the_first_bad_row_naming_its_line(tmp_path):
    with pytest.raises(LogError, match=r"line 3: 2 fields, expected 3"):
        read_log(write(tmp_path, "t,a,b\n0,1,2\n0.1,1\n"), strict=True)


@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("a,b\n1,2\n", "no 't' column"),
    ("t,label\n0,x\n", "no channel columns"),
    ("t,a,a\n0,1,2\n", "duplicate column"),
])
def test_unusable_files(tmp_path, text, message):
    with pytest.raises(LogError, match=message):
        read_log(write(tmp_path, text))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(LogError, match="cannot read log"):
        read_log(tmp_path / "nope.csv")
    with pytest.raises(LogError, match="unknown format '.parquet'"):
        read_log(write(tmp_path, "t,a\n", name="x.parquet"))
