"""The baton: which thread runs a decision loop, handed on while the model it invoked overruns.

Inline (the default), a shared model is invoked on the loop's own thread,
the cheapest way per window (docs/streams.md). While that invoke runs the
loop thread can decide nothing else: without help, a hung model on one
stream would make every stream late.

So the right to run the loop is a lock, the baton. The thread that holds it
runs the loop's turns; it *lends* the baton (releases the lock) for the
length of each inline invoke and *takes it back* afterwards. On time, nobody
else wants it: lending costs a lock release and an acquire per invoke, and
no other thread wakes. When an invoke still runs at its model's takeover
time, the watchdog calls a *deputy*: a spare thread that takes the baton
and runs the loop's turns, the same code, so every other stream goes on
deciding on time, and the overrunning model's windows fall back at their
deadlines (:meth:`~.edf.SharedModel.poll`, on the deputy's turn). A deputy
can itself invoke another model and lend the baton in turn; it gets a
deputy of its own, so a spare thread is started for each invoke that
overruns at once (at most one per model), and kept for the next time.

When the invoke returns, its thread asks for the baton back. Whoever runs
the loop then (a deputy, or the first thread after a deputy's own invoke)
ends its turn, hands the baton over and waits to get it back (a deputy:
goes back to waiting for a call); a thread asleep in the loop's wait is
woken. The late answer is dropped; the thread goes on with the turn it was
in. Every thread touches the loop's state only while it holds the baton;
the invoking thread touches nothing between lending and taking back.

A deputy serves only the lending it was called for: one that gets the lock
after the invoke's thread took the baton back and lent it again (for an
invoke that did not overrun) hands it straight back.

One stream (:class:`~edge_infer.runtime.Runtime`, inline, frames in real
time) uses the same baton: its watchdog calls the deputy right after it
decided the window of an invoke that still runs, so the deputy's decisions
(every window it completes falls back ``overrun``: the model is busy) come
after that one, in order (docs/deadlines.md). Its deputy never invokes, so
there is at most one.

When the run is over, the first thread keeps the baton until the sinks are
closed: a thread that comes back from an invoke after that gets
:class:`RunOver` instead of the baton's state, and decides nothing more. An
error in a deputy's turn ends the run and is raised on the first thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional

log = logging.getLogger(__name__)


class RunOver(Exception):
    """Raised in a thread back from an invoke once the run is over: it must not decide or invoke anything more."""


class Baton:
    """The right to run the loop: one lock, lent around inline invokes, taken over by deputies when one overruns.

    ``turn()`` runs one turn of the loop and returns False when the run is over. ``wake()`` wakes a turn
    asleep in the loop's wait. ``on_thread(native_id)`` hears of each deputy thread started (SCHED_FIFO
    under ``--realtime``).
    """

    def __init__(self, turn: Callable[[], bool], wake: Callable[[], None],
                 on_thread: Optional[Callable[[int], None]] = None, name: str = "edge-infer-deputy"):
        #: Held by whichever thread runs the loop.
        self.lock = threading.Lock()
        #: The run is over (a turn said so, or the first thread left the loop): nobody starts another turn.
        self.over = False
        #: Times a deputy took over the loop (for the summary).
        self.takeovers = 0
        #: An error raised in a deputy's turn, for the first thread to raise.
        self.error: Optional[BaseException] = None
        self._turn = turn
        self._wake = wake
        self._on_thread = on_thread
        self._name = name
        self._wanted: List[int] = []  # one entry per thread back from an invoke, waiting for the baton
        self._idle: List[threading.Lock] = []  # the call locks of deputies waiting to be called
        self._lends = 0  # how many times the baton was lent: a deputy called for one lending serves no later one
        self._called_at: Dict[threading.Lock, int] = {}  # per deputy (its call lock): the lending it was called for
        self._threads: List[threading.Thread] = []
        self._closing = False
        self._held = False  # the first thread took it (hold) and has not handed it back at the end (close)

    # --- the loop's side ------------------------------------------------------------------------------------

    def hold(self) -> None:
        """The loop's first thread takes the baton before its first turn (and keeps it until :meth:`close`)."""
        self.lock.acquire()
        self._held = True

    def run_turns(self) -> None:
        """The first thread's loop: turns until the run is over, handing the baton to a thread back from an
        invoke (a deputy's) between turns. Raises a deputy's error; returns holding the baton."""
        while not self.over:
            if not self._turn():
                self.over = True
            elif self._wanted:
                self.lock.release()
                self.take_back()
        if self.error is not None:
            raise self.error

    def lend(self) -> None:
        """Before an inline invoke: the loop may go on in a deputy while this thread computes."""
        self._lends += 1
        self.lock.release()

    def take_back(self) -> None:
        """After the invoke: wait for the baton (whoever runs the loop finishes its turn first). Raises
        :class:`RunOver` (without the baton) if the run ended meanwhile."""
        wanted = self._wanted
        wanted.append(1)  # list.append/pop: atomic, so two threads back from two invokes count right
        try:
            self._wake()
            self.lock.acquire()
        finally:
            wanted.pop()
        if self.over and threading.current_thread() in self._threads:
            self.lock.release()  # a deputy back after the end: the first thread finishes the run, not it
            raise RunOver()

    @property
    def wanted(self) -> bool:
        """A thread back from an invoke waits for the baton: the turn must end (the loop's wait too)."""
        return bool(self._wanted)

    def finish(self) -> None:
        """The loop is over (the first thread, holding the baton): deputies stop; a thread back from an invoke
        gets :class:`RunOver`. The first thread keeps the baton until :meth:`close`."""
        self.over = True

    # --- the watchdog's side --------------------------------------------------------------------------------

    def call_deputy(self) -> None:
        """An invoke overran: a spare thread takes the baton as soon as it is free and runs the loop."""
        if self.over or self._closing:
            return
        try:
            call = self._idle.pop()
        except IndexError:
            call = self._start_deputy()
        self._called_at[call] = self._lends
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
            self.lock.acquire()
            if self.over or self._wanted or self._lends != self._called_at[call]:
                # called late: the invoke is back already (its thread may even have lent the baton again, for an
                # invoke nobody asked a deputy for), or the run is over
                self.lock.release()
            else:
                self.takeovers += 1
                try:
                    self._stint()
                except RunOver:  # its own invoke came back after the end: it holds nothing, and is done
                    return
                self.lock.release()
            if self._closing:
                return
            self._idle.append(call)

    def _stint(self) -> None:
        """Run turns until a thread back from an invoke wants the baton, or the run is over."""
        while not self._wanted and not self.over:
            try:
                if not self._turn():
                    self.over = True
            except RunOver:
                raise
            except BaseException as exc:  # the first thread raises it: the run must not end as if it had finished
                log.exception("error in the decision loop, run by a deputy while the model overran")
                self.error = exc
                self.over = True

    def close(self) -> None:
        """After the run (the first thread, holding the baton): stop idle deputies, hand the baton back.
        A deputy still inside a hung invoke gets :class:`RunOver` when it returns (a daemon thread)."""
        self._closing = True
        self.over = True
        while self._idle:
            self._idle.pop().release()
        if self._held:
            self._held = False
            self.lock.release()
