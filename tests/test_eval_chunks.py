"""Logs read in bounded chunks (``eval``) hold exactly the rows the whole-file readers give ``replay``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_infer.histogram import Histogram
from edge_infer.io import iter_log, read_log
from edge_infer.io.mcap_log import write_mcap_log

from conftest import BUNDLED_LOG, ROOT


def joined(path: Path, chunk_rows: int):
    chunks = list(iter_log(path, chunk_rows=chunk_rows))
    assert all(len(c) <= chunk_rows for c in chunks)
    t = np.concatenate([c.t for c in chunks])
    values = np.concatenate([c.values for c in chunks])
    labels = None if chunks[0].labels is None else [x for c in chunks for x in c.labels]
    bad = [b for c in chunks for b in c.bad_rows]
    return t, values, labels, bad


def assert_same(path: Path, chunk_rows: int) -> None:
    whole = read_log(path)
    t, values, labels, bad = joined(path, chunk_rows)
    np.testing.assert_array_equal(t, whole.t)
    assert values.tobytes() == whole.values.tobytes()  # NaN, Inf and -0.0 included
    assert labels == whole.labels
    assert bad == whole.bad_rows


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chunks") / "damaged.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "corrupt_log.py"), str(BUNDLED_LOG), str(out),
                    "--faults-out", str(out.with_suffix(".json")), "--seed", "3"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("chunk_rows", [1, 7, 500, 100_000])
def test_csv_chunks_equal_the_whole_damaged_log(damaged: Path, chunk_rows: int) -> None:
    assert_same(damaged, chunk_rows)


def test_csv_chunks_that_numpy_cannot_parse_go_row_by_row(tmp_path: Path) -> None:
    log = tmp_path / "odd.csv"
    log.write_text('t,a,b,label\r\n0.0,1,2,x\r\n\r\n0.1,"3",4, y \r\n0.2,1_0,nan,z\r\n0.3,5\r\n0.4,inf,-0.0,w\r\n'
                   "0.5,1e40,2,v\r\n0.6,junk,2,u\r\n")
    for chunk_rows in (1, 2, 3, 100):
        assert_same(log, chunk_rows)
    whole = read_log(log)
    assert [line for line, _ in whole.bad_rows] == [6, 9]  # cut short; not a number


def test_mcap_chunks_equal_the_whole_recording(damaged: Path, tmp_path: Path) -> None:
    recording = tmp_path / "damaged.mcap"
    write_mcap_log(recording, read_log(damaged), {"source": "test"})
    for chunk_rows in (1, 333, 100_000):
        assert_same(recording, chunk_rows)


def test_histogram_record_many_is_record_for_each() -> None:
    values = np.concatenate([np.random.default_rng(0).integers(0, 10 ** 9, 5000), [0, 1, 127, 128, 255, 256,
                                                                                   2 ** 33, 2 ** 33 - 1]])
    one, many = Histogram(), Histogram()
    one.record_all(values.tolist())
    many.record_many(values)
    assert (one.counts, one.total, one.max, one.sum) == (many.counts, many.total, many.max, many.sum)
