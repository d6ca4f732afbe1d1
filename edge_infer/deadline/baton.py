"""The baton: which thread runs a many-stream loop, handed on while the model it invoked overruns.

Inline (the default), a shared model is invoked on the loop's own thread,
the cheapest way per window (docs/streams.md). While that invoke runs the
loop thread can decide nothing else; when it overruns, the watchdog decides
the windows *in* the invoke at their deadlines, but every other stream's
windows would wait for the invoke to return: a hung model on one stream
would make every stream late.

So the right to run the loop is a lock, the baton. The thread that holds it
runs the loop's turns; it *lends* the baton (releases the lock) for the
length of each inline invoke and *takes it back* afterwards. On time, nobody
else wants it: lending costs a lock release and an acquire per invoke, and
no other thread wakes. When an invoke overruns, the watchdog fires, decides
the overrun windows (holding the baton: sinks are never called by two
threads at once) and calls a *deputy*: a spare thread that takes the baton
and runs the loop's turns, the same code, so every other stream goes on
deciding on time, and the hung model's own streams fall back at their
deadlines (its windows wait, then expire: :mod:`.edf`). A deputy can itself
invoke another model and lend the baton in turn; it gets a deputy of its
own, so a spare thread is started for each invoke that overruns at once (at
most one per model), and kept for the next time.

When the invoke returns, its thread asks for the baton back: the deputy
finishes its turn (a deputy asleep in the loop's wait is woken), hands the
baton over and goes back to waiting. The late answer is dropped; the thread
goes on with the turn it was in.

Every thread touches the loop's state only while it holds the baton; the
invoking thread touches nothing between lending and taking back.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

log = logging.getLogger(__name__)


class Baton:
    """The right to run the loop: one lock, lent around inline invokes, taken over by deputies when one overruns.

    ``turn()`` runs one turn of the loop and returns False when the run is over. ``wake()`` wakes a turn
    asleep in the loop's wait. ``on_thread(native_id)`` hears of each deputy thread started (SCHED_FIFO
    under ``--realtime``).
    """

    def __init__(self, turn: Callable[[], bool], wake: Callable[[], None],
                 on_thread: Optional[Callable[[int], None]] = None, name: str = "edge-infer-deputy"):
        #: Held by whichever thread runs the loop (or by the watchdog while it decides an overrun window).
        self.lock = threading.Lock()
        #: The run is over (a turn said so, or the loop ended): a deputy that gets the baton hands it back.
        self.over = False
        #: Turns run by deputies, and how many times a deputy took over (for the summary).
        self.deputy_turns = 0
        self.takeovers = 0
        self._turn = turn
        self._wake = wake
        self._on_thread = on_thread
        self._name = name
        self._wanted: List[int] = []  # one entry per thread back from an invoke, waiting for the baton
        self._idle: List[threading.Lock] = []  # the call locks of deputies waiting to be called
        self._threads: List[threading.Thread] = []
        self._closing = False

    # --- the loop's side ------------------------------------------------------------------------------------

    def hold(self) -> None:
        """The loop's first thread takes the baton before its first turn."""
        self.lock.acquire()

    def lend(self) -> None:
        """Before an inline invoke: the loop may go on in a deputy while this thread computes."""
        self.lock.release()

    def take_back(self) -> None:
        """After the invoke: wait for the baton (a deputy finishes its turn first)."""
        wanted = self._wanted
        wanted.append(1)  # list.append/pop: atomic, so two threads back from two invokes count right
        self._wake()
        self.lock.acquire()
        wanted.pop()

    @property
    def wanted(self) -> bool:
        """A thread back from an invoke waits for the baton: a deputy's turn must end (the loop's wait too)."""
        return bool(self._wanted)

    def release(self) -> None:
        """The loop is over: every deputy that gets the baton from now on hands it straight back."""
        self.over = True
        self.lock.release()

    # --- the watchdog's side --------------------------------------------------------------------------------

    def call_deputy(self) -> None:
        """An invoke overran: a spare thread takes the baton as soon as it is free and runs the loop."""
        if self.over or self._closing:
            return
        try:
            call = self._idle.pop()
        except IndexError:
            call = self._start_deputy()
        call.release()

    # --- the deputies ---------------------------------------------------------------------------------------

    def _start_deputy(self) -> threading.Lock:
        call = threading.Lock()
        call.acquire()
        thread = threading.Thread(target=self._deputy, args=(call,), daemon=True,
                                  name=f"{self._name}-{len(self._threads) + 1}")
        self._threads.append(thread)
        thread.start()
        if self._on_thread is not None:
            self._on_thread(thread.native_id)  # type: ignore[arg-type]
        return call

    def _deputy(self, call: threading.Lock) -> None:
        while True:
            call.acquire()
            if self._closing:
                return
            with self.lock:
                if not self.over and not self._wanted:
                    self.takeovers += 1
                    self._run_turns()
            self._idle.append(call)

    def _run_turns(self) -> None:
        while not self._wanted and not self.over:
            self.deputy_turns += 1
            try:
                if not self._turn():
                    self.over = True
            except Exception:  # the first thread reports the run's errors; a deputy must not die holding the baton
                log.exception("error in the decision loop, run by a deputy while the model overran")
                self.over = True

    def close(self) -> None:
        """Stop idle deputies (one inside an invoke ends when it returns: they are daemon threads)."""
        self._closing = True
        while self._idle:
            self._idle.pop().release()
