/* The native backstop: a thread that writes a pre-encoded fallback frame at its fire time without the GIL.
 *
 * Why it exists (docs/deadlines.md, "The backstop"): CPython's GIL has no priority inheritance. A Python
 * thread of normal priority that the kernel preempts while it holds the GIL keeps every other Python thread
 * waiting, the SCHED_FIFO loop and watchdog included: 3-34 ms measured with a busy Python thread in the
 * process. No Python-level watchdog can keep a deadline through that. This thread never touches Python:
 * it sleeps on a condition variable (CLOCK_MONOTONIC, the clock of time.perf_counter_ns) until the next
 * queued frame's fire time and, unless that frame was taken back first, write()s it to the device's file
 * descriptor (its own dup, so that a port closed under it never makes it write to a reused descriptor).
 *
 * The protocol with the Python side (edge_infer/sources/link_backstop.py), a queue of frames in fire order:
 *   arm(tag, fire_at_ns, wire)  queue ``wire``, the fallback for window ``tag``, to be written at
 *                               ``fire_at_ns`` and never before the frames queued ahead of it;
 *   collect()                   what was written since the last call: (tag, sent_ns, written, errno)...;
 *   answer(tag, w)              the caller answers window ``tag`` itself: if its frame is next, ``w`` is
 *                               written in its place at once (one call: nothing can go out in between);
 *   clear()                     drop everything queued (the caller sends another frame, then arms again);
 *   set_fd(fd)                  write to a dup of ``fd`` from now on (-1: nowhere); clears.
 * Frames go out in the order they were queued, because each carries the link's next sequence number and
 * signing counter, which the device only accepts growing. Every call takes the mutex; the thread holds it
 * while it writes (a non-blocking descriptor: microseconds), never while it waits for anything else, so a
 * caller holding the GIL cannot deadlock with it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_WIRE 512 /* an ACTION frame is about 40 bytes signed; a slot refuses anything longer */
#define SLOTS 16      /* windows armed at once (written or not, until collected) */
#define NEVER INT64_MAX

typedef struct {
    long long tag;
    int64_t fire_at_ns;
    Py_ssize_t len;
    unsigned char wire[MAX_WIRE];
} Slot;

typedef struct {
    long long tag;
    int64_t sent_ns;
    Py_ssize_t written;
    int err;
} Sent;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int inited, started, closing, fd; /* inited: __init__ ran once (a closed backstop is never started again) */
    int head, queued; /* armed slots, in fire order, from ``head`` */
    int nsent;        /* written, not yet collected */
    long tid;
    int64_t sleeping_until, late_max_ns;
    unsigned long long fired;
    Slot slots[SLOTS];
    Sent sent[SLOTS];
} Backstop;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static Py_ssize_t write_out(Backstop *b, const unsigned char *wire, Py_ssize_t len, int *err) {
    ssize_t n = b->fd >= 0 ? write(b->fd, wire, (size_t)len) : -1;
    *err = n < 0 ? (b->fd >= 0 ? errno : EBADF) : 0;
    return n < 0 ? 0 : n;
}

/* Write the head slot (mutex held) and keep what happened for collect(). */
static void fire(Backstop *b, int64_t now) {
    Slot *slot = &b->slots[b->head];
    Sent *sent = &b->sent[b->nsent++];
    sent->tag = slot->tag;
    sent->written = write_out(b, slot->wire, slot->len, &sent->err);
    sent->sent_ns = now_ns();
    b->head = (b->head + 1) % SLOTS;
    b->queued--;
    b->fired++;
    if (now - slot->fire_at_ns > b->late_max_ns)
        b->late_max_ns = now - slot->fire_at_ns;
}

static void *run(void *arg) {
    Backstop *b = (Backstop *)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Python's main thread's business */
    pthread_mutex_lock(&b->mu);
    b->tid = (long)syscall(SYS_gettid);
    pthread_cond_broadcast(&b->cv); /* the constructor waits for the id */
    while (!b->closing) {
        if (b->queued == 0) {
            b->sleeping_until = NEVER;
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        int64_t fire_at = b->slots[b->head].fire_at_ns, now = now_ns();
        if (now >= fire_at) {
            fire(b, now);
            continue;
        }
        struct timespec until = {(time_t)(fire_at / 1000000000), (long)(fire_at % 1000000000)};
        b->sleeping_until = fire_at;
        pthread_cond_timedwait(&b->cv, &b->mu, &until);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static int dup_fd(int fd) { return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0); }

static int Backstop_init(Backstop *b, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd", NULL};
    int fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", names, &fd))
        return -1;
    if (b->inited) {
        PyErr_SetString(PyExc_RuntimeError, "Backstop is already initialised");
        return -1;
    }
    b->inited = 1;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&b->mu, NULL);
    b->fd = dup_fd(fd);
    if (fd >= 0 && b->fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    b->sleeping_until = NEVER;
    int err = pthread_create(&b->thread, NULL, run, b);
    if (err) {
        if (b->fd >= 0)
            close(b->fd);
        b->fd = -1;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    }
    b->started = 1;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&b->mu);
    while (b->tid == 0)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    Py_END_ALLOW_THREADS
    return 0;
}

static void stop(Backstop *b) {
    if (!b->started)
        return;
    pthread_mutex_lock(&b->mu);
    b->closing = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    b->started = 0;
    pthread_mutex_lock(&b->mu); /* a call from another Python thread (the GIL is released here) may be writing */
    int fd = b->fd;
    b->fd = -1;
    pthread_mutex_unlock(&b->mu);
    if (fd >= 0)
        close(fd);
}

static void Backstop_dealloc(Backstop *b) {
    Py_BEGIN_ALLOW_THREADS
    stop(b);
    Py_END_ALLOW_THREADS
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *closed_error(void) {
    PyErr_SetString(PyExc_ValueError, "the backstop is closed");
    return NULL;
}

static PyObject *Backstop_arm(Backstop *b, PyObject *const *args, Py_ssize_t nargs) {
    long long tag, fire_at;
    Py_buffer wire;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "arm(tag, fire_at_ns, wire)");
        return NULL;
    }
    tag = PyLong_AsLongLong(args[0]);
    if (tag == -1 && PyErr_Occurred()) /* (the C-API is not to be called with an exception set) */
        return NULL;
    fire_at = PyLong_AsLongLong(args[1]);
    if (fire_at == -1 && PyErr_Occurred())
        return NULL;
    if (!b->started)
        return closed_error();
    if (PyObject_GetBuffer(args[2], &wire, PyBUF_SIMPLE) < 0)
        return NULL;
    if (wire.len > MAX_WIRE) {
        PyBuffer_Release(&wire);
        PyErr_Format(PyExc_ValueError, "a backstop frame is at most %d bytes, not %zd", MAX_WIRE, wire.len);
        return NULL;
    }
    pthread_mutex_lock(&b->mu);
    int room = b->queued + b->nsent < SLOTS;
    if (room) {
        Slot *slot = &b->slots[(b->head + b->queued) % SLOTS];
        memcpy(slot->wire, wire.buf, (size_t)wire.len);
        slot->len = wire.len;
        slot->tag = tag;
        slot->fire_at_ns = fire_at;
        if (b->queued++ == 0 && fire_at < b->sleeping_until)
            pthread_cond_signal(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    PyBuffer_Release(&wire);
    return PyBool_FromLong(room);
}

static PyObject *Backstop_collect(Backstop *b, PyObject *unused) {
    Sent sent[SLOTS];
    pthread_mutex_lock(&b->mu);
    int n = b->nsent;
    memcpy(sent, b->sent, sizeof(Sent) * (size_t)n);
    b->nsent = 0;
    pthread_mutex_unlock(&b->mu);
    PyObject *out = PyTuple_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *item = Py_BuildValue("(LLni)", sent[i].tag, (long long)sent[i].sent_ns, sent[i].written, sent[i].err);
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *Backstop_answer(Backstop *b, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer wire;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "answer(tag, wire)");
        return NULL;
    }
    long long tag = PyLong_AsLongLong(args[0]);
    if (tag == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[1], &wire, PyBUF_SIMPLE) < 0)
        return NULL;
    int err = 0, answered;
    Py_ssize_t written = 0;
    pthread_mutex_lock(&b->mu);
    answered = b->queued > 0 && b->slots[b->head].tag == tag;
    if (answered) {
        written = write_out(b, wire.buf, wire.len, &err);
        b->head = (b->head + 1) % SLOTS;
        b->queued--;
        /* wake the thread only if the next frame is due before it means to look again (on time it is not: one
           wake-up per budget, not one per window) */
        if (b->queued > 0 && b->slots[b->head].fire_at_ns < b->sleeping_until)
            pthread_cond_signal(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    PyBuffer_Release(&wire);
    if (!answered)
        Py_RETURN_NONE;
    return Py_BuildValue("(ni)", written, err);
}

static PyObject *Backstop_clear(Backstop *b, PyObject *unused) {
    pthread_mutex_lock(&b->mu);
    b->queued = 0;
    pthread_mutex_unlock(&b->mu);
    Py_RETURN_NONE;
}

static PyObject *Backstop_set_fd(Backstop *b, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < -1 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "not a file descriptor: %ld", fd);
        return NULL;
    }
    if (!b->started)
        return closed_error();
    int copy = dup_fd((int)fd);
    if (fd >= 0 && copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    pthread_mutex_lock(&b->mu);
    int old = b->fd;
    b->fd = copy;
    b->queued = 0;
    pthread_mutex_unlock(&b->mu);
    if (old >= 0)
        close(old);
    Py_RETURN_NONE;
}

static PyObject *Backstop_close(Backstop *b, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    stop(b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *get_fired(Backstop *b, void *c) {
    pthread_mutex_lock(&b->mu);
    unsigned long long fired = b->fired;
    pthread_mutex_unlock(&b->mu);
    return PyLong_FromUnsignedLongLong(fired);
}
static PyObject *get_late_max_ns(Backstop *b, void *c) {
    pthread_mutex_lock(&b->mu);
    long long late = b->late_max_ns;
    pthread_mutex_unlock(&b->mu);
    return PyLong_FromLongLong(late);
}
static PyObject *get_native_id(Backstop *b, void *c) { return PyLong_FromLong(b->tid); }

static PyMethodDef methods[] = {
    {"arm", (PyCFunction)(void (*)(void))Backstop_arm, METH_FASTCALL,
     "arm(tag, fire_at_ns, wire) -> bool: queue ``wire`` to be written at ``fire_at_ns`` (perf_counter_ns), after "
     "every frame queued before it; False if the queue is full."},
    {"collect", (PyCFunction)Backstop_collect, METH_NOARGS,
     "The frames written since the last call, in order: a tuple of (tag, sent_ns, written, errno)."},
    {"answer", (PyCFunction)(void (*)(void))Backstop_answer, METH_FASTCALL,
     "answer(tag, wire) -> (written, errno) or None: if the next frame is ``tag``'s, write ``wire`` in its place, "
     "now; None if it is not (it went out already, or was never queued)."},
    {"clear", (PyCFunction)Backstop_clear, METH_NOARGS, "Drop every queued frame."},
    {"set_fd", (PyCFunction)Backstop_set_fd, METH_O, "set_fd(fd): write to a dup of ``fd`` (-1: nowhere); clears."},
    {"close", (PyCFunction)Backstop_close, METH_NOARGS, "Stop the thread and close the descriptor's dup."},
    {NULL}};

static PyGetSetDef getset[] = {
    {"fired", (getter)get_fired, NULL, "frames written so far", NULL},
    {"late_max_ns", (getter)get_late_max_ns, NULL, "the latest a write started after its fire time", NULL},
    {"native_id", (getter)get_native_id, NULL, "the thread's id for the OS (SCHED_FIFO under --realtime)", NULL},
    {NULL}};

static PyTypeObject BackstopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edge_infer.deadline._backstop.Backstop",
    .tp_basicsize = sizeof(Backstop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A thread that writes one pre-encoded frame at its fire time, without the GIL (module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Backstop_init,
    .tp_dealloc = (destructor)Backstop_dealloc,
    .tp_methods = methods,
    .tp_getset = getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_backstop",
                                    "The native backstop (see the C source's header).", -1, NULL};

PyMODINIT_FUNC PyInit__backstop(void) {
    if (PyType_Ready(&BackstopType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BackstopType);
    if (PyModule_AddObject(m, "Backstop", (PyObject *)&BackstopType) < 0) {
        Py_DECREF(&BackstopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
