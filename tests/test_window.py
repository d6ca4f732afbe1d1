import numpy as np
import pytest

from edge_infer.window import WindowBuffer


def frames(n, channels=2):
    return [np.full(channels, i, dtype=np.float32) for i in range(n)]


@pytest.mark.parametrize("window,hop,n", [(4, 1, 10), (4, 2, 11), (5, 5, 23), (3, 7, 30), (1, 1, 3)])
def test_windows_are_due_after_the_first_window_then_every_hop(window, hop, n):
    buf = WindowBuffer(window, 2, hop)
    due = [i for i, f in enumerate(frames(n)) if buf.push(f)]
    assert due == list(range(window - 1, n, hop))


def test_view_holds_the_last_frames_oldest_first_across_wraparound():
    buf = WindowBuffer(4, 2, 1)
    for i, f in enumerate(frames(11)):
        if buf.push(f):
            assert buf.view()[:, 0].tolist() == list(range(i - 3, i + 1))


def test_view_is_contiguous_and_not_a_copy():
    buf = WindowBuffer(3, 2, 1)
    for f in frames(5):
        buf.push(f)
    view = buf.view()
    assert view.flags["C_CONTIGUOUS"] and view.base is not None


def test_reset_needs_a_whole_new_window():
    buf = WindowBuffer(3, 1, 1)
    for f in frames(5, 1):
        buf.push(f)
    buf.reset()
    assert [buf.push(f) for f in frames(3, 1)] == [False, False, True]


def test_rejects_nonsense_sizes():
    with pytest.raises(ValueError):
        WindowBuffer(0, 1, 1)
