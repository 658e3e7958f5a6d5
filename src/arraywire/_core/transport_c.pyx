# cython: language_level=3
"""Compiled transport backend: twin of ``transport_py``.

Buffers are taken with the buffer protocol and the whole partial-transfer loop
runs with the GIL released, calling send/recv/sendmsg/recvmsg directly. The GIL
is taken again only to run signal handlers, report progress, or raise.
Validation, limits and messages come from ``_common`` so both twins share them.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_ANY_CONTIGUOUS,
    PyBUF_FULL_RO,
    PyBUF_WRITABLE,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_get_thread_ident
from libc.errno cimport EBADF, EFAULT, EINTR, errno
from libc.limits cimport INT_MAX
from libc.math cimport INFINITY, ceil
from libc.string cimport memcmp, memcpy, memmove, memset

import _socket
import os
import socket
import threading

import numpy as np

from arraywire._wire.limits import (
    CLEAN_END,
    IOV_MAX as _SHARED_IOV_MAX,
    MAX_CHUNK,
    PROGRESS_CHUNK,
    PROGRESS_INTERVAL,
    READ_AHEAD_BYTES,
    SIGNAL_CHECK_INTERVAL,
    format_has_objects,
    mark_progress,
    not_a_buffer,
    not_contiguous,
    numpy_bytes,
    object_items,
    read_only,
    repeatable_dtype,
)
from arraywire._core.sockets import check_socket
from arraywire._wire.errors import IncompleteTransferError
from arraywire._wire.header import MAX_PAYLOAD


cdef extern from "transport_c_compat.h" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned long nfds_t

    struct iovec:
        void *iov_base
        size_t iov_len

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct pollfd:
        int fd
        short events
        short revents

    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL
        MSG_WAITALL
        IOV_MAX
        POLLIN
        POLLOUT

    int poll(pollfd *fds, nfds_t nfds, int timeout)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    double arraywire_monotonic()
    bint arraywire_would_block(int err)
    const int *arraywire_socket_fd_field(PyObject *sock)
    int arraywire_load_fd(const int *field)
    ssize_t arraywire_process_vm_readv(
        int pid, const iovec *local, unsigned long nlocal,
        const iovec *remote, unsigned long nremote,
    )


BACKEND = "c"

cdef size_t max_chunk = MAX_CHUNK
cdef size_t progress_chunk = PROGRESS_CHUNK
cdef double progress_interval = PROGRESS_INTERVAL
cdef double signal_check_interval = SIGNAL_CHECK_INTERVAL
# Blocking receives ask for MSG_WAITALL only when this much is still wanted
# (see ``transfer``).
cdef size_t waitall_min = 4 << 20
cdef Py_ssize_t iov_batch = min(_SHARED_IOV_MAX, IOV_MAX)
cdef unsigned long main_thread_ident = threading.main_thread().ident


def _after_fork_in_child():
    # The thread that forked is the child's main thread: signal handlers run
    # there, so its transfers must check for them.
    global main_thread_ident
    main_thread_ident = PyThread_get_thread_ident()


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef bint socket_fd_field_found():
    """Whether socket objects keep their descriptor where the header says."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    found = arraywire_load_fd(arraywire_socket_fd_field(<PyObject *>probe)) == probe.fileno()
    probe.close()
    return found and arraywire_load_fd(arraywire_socket_fd_field(<PyObject *>probe)) == -1


cdef bint fd_field_found = socket_fd_field_found()


cdef enum Status:
    FINISHED
    CHECK_SIGNALS
    REPORT_PROGRESS
    PEER_CLOSED
    TIMED_OUT
    FAILED


cdef struct Transfer:
    int fd                  # the descriptor at the start: fd_field's fallback
    const int *fd_field     # the socket object's descriptor, read before each call
    bint sending
    bint in_main_thread
    bint reporting
    bint poll_blocking      # a blocking socket driven with MSG_DONTWAIT + poll
    int send_flags
    int recv_flags
    bint wait_all           # blocking receive: MSG_WAITALL for large requests
    bint whole_call         # the last call returns short only if cut by a signal
    iovec *iov              # non-empty buffers; iov[first] is trimmed as it moves
    Py_ssize_t niov
    Py_ssize_t first
    size_t total
    size_t done
    size_t chunk            # most bytes asked of one call
    double timeout          # < 0 blocking, 0 never wait, > 0 inactivity limit
    double last_activity
    double next_report
    double next_signal_check
    int err


# --- GIL-free part --------------------------------------------------------

cdef ssize_t one_call(Transfer *t, size_t *wanted) noexcept nogil:
    """One send/recv (last buffer) or sendmsg/recvmsg (batch, like _step.PendingViews.batch)."""
    cdef iovec *cur = &t.iov[t.first]
    cdef size_t budget = t.chunk
    cdef size_t total = 0
    cdef size_t saved_len = 0
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t trimmed = -1
    cdef ssize_t moved
    cdef msghdr msg
    cdef int fd = arraywire_load_fd(t.fd_field)
    cdef int recv_flags = t.recv_flags
    if t.first == t.niov - 1:
        wanted[0] = cur.iov_len if cur.iov_len < budget else budget
        if t.sending:
            moved = send(fd, cur.iov_base, wanted[0], t.send_flags)
        else:
            t.whole_call = t.wait_all and wanted[0] >= waitall_min
            if t.whole_call:
                recv_flags |= MSG_WAITALL
            moved = recv(fd, cur.iov_base, wanted[0], recv_flags)
        if moved < 0:
            t.err = errno
        return moved
    while t.first + count < t.niov and count < iov_batch:
        if cur[count].iov_len >= budget:
            saved_len = cur[count].iov_len
            trimmed = count
            cur[count].iov_len = budget
            total += budget
            count += 1
            break
        total += cur[count].iov_len
        budget -= cur[count].iov_len
        count += 1
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = cur
    msg.msg_iovlen = count
    if t.sending:
        moved = sendmsg(fd, &msg, t.send_flags)
    else:
        t.whole_call = t.wait_all and total >= waitall_min
        if t.whole_call:
            recv_flags |= MSG_WAITALL
        moved = recvmsg(fd, &msg, recv_flags)
    if moved < 0:
        t.err = errno
    if trimmed >= 0:
        cur[trimmed].iov_len = saved_len
    wanted[0] = total
    return moved


cdef void advance(Transfer *t, size_t moved) noexcept nogil:
    cdef iovec *cur
    t.done += moved
    while moved:
        cur = &t.iov[t.first]
        if moved >= cur.iov_len:
            moved -= cur.iov_len
            t.first += 1
        else:
            cur.iov_base = <char *>cur.iov_base + moved
            cur.iov_len -= moved
            moved = 0


cdef int wait_ready(Transfer *t) noexcept nogil:
    """poll() until the socket is ready, the inactivity limit passes or a
    progress report is due; 0 means one of the two deadlines came."""
    cdef pollfd ready
    cdef double deadline = INFINITY
    cdef double millis = -1
    if t.timeout > 0:
        deadline = t.last_activity + t.timeout
    if t.reporting and t.next_report < deadline:
        deadline = t.next_report
    if deadline != INFINITY:
        millis = ceil((deadline - arraywire_monotonic()) * 1000.0)
        if millis <= 0:
            return 0
    ready.fd = arraywire_load_fd(t.fd_field)
    if ready.fd < 0:
        return 1  # closed meanwhile: the next call reports EBADF
    ready.events = POLLOUT if t.sending else POLLIN
    ready.revents = 0
    return poll(&ready, 1, INT_MAX if millis > INT_MAX else <int>millis)


cdef Status run(Transfer *t) noexcept nogil:
    """Move bytes until done, or until the GIL is needed."""
    cdef size_t wanted = 0
    cdef ssize_t moved
    cdef double now
    cdef int ready
    while t.done < t.total:
        moved = one_call(t, &wanted)
        if moved < 0:
            if t.err == EINTR:
                return CHECK_SIGNALS
            if (t.timeout > 0 or t.poll_blocking) and arraywire_would_block(t.err):
                # Try first, poll on EAGAIN; a wake-up that still finds
                # nothing to do just loops (CPython's sock_call_ex).
                ready = wait_ready(t)
                if ready > 0:
                    continue
                if ready < 0:
                    t.err = errno
                    return CHECK_SIGNALS if t.err == EINTR else FAILED
                now = arraywire_monotonic()
                if t.timeout > 0 and now >= t.last_activity + t.timeout:
                    return TIMED_OUT
                if t.reporting and now >= t.next_report:
                    t.next_report = now + progress_interval
                    return REPORT_PROGRESS
                continue
            return FAILED
        if moved == 0:
            if t.sending:
                continue
            return PEER_CLOSED
        advance(t, <size_t>moved)
        if t.timeout > 0 or t.reporting or t.in_main_thread:
            now = arraywire_monotonic()
            t.last_activity = now
            if t.reporting and now >= t.next_report and t.done < t.total:
                t.next_report = now + progress_interval
                return REPORT_PROGRESS
            if t.in_main_thread:
                # A blocking send or MSG_WAITALL receive cut short was
                # most likely cut by a signal.
                if now >= t.next_signal_check or (t.whole_call and <size_t>moved < wanted):
                    t.next_signal_check = now + signal_check_interval
                    return CHECK_SIGNALS
    return FINISHED


# --- GIL-holding part -------------------------------------------------------

cdef int drive(Transfer *t, object progress) except -1:
    cdef Status status
    while True:
        if t.timeout == 0:
            # A transfer that never waits keeps the GIL: releasing and taking
            # it back costs more than its calls, up to the 5 ms switch interval
            # when another thread wants it (an event loop's moves).
            status = run(t)
        else:
            with nogil:
                status = run(t)
        if status == FINISHED:
            break
        elif status == CHECK_SIGNALS:
            PyErr_CheckSignals()
        elif status == REPORT_PROGRESS:
            progress(t.done, t.total)
        elif status == PEER_CLOSED:
            raise IncompleteTransferError(t.done, t.total)
        elif status == TIMED_OUT:
            raise socket.timeout("timed out")
        else:
            raise OSError(t.err, os.strerror(t.err))
    if progress is not None:
        progress(t.done, t.total)
    return 0


cdef object transfer(
    iovec *iov, Py_ssize_t niov, size_t total, object sock, int fd, object timeout,
    bint sending, object progress,
):
    cdef Transfer t
    memset(&t, 0, sizeof(t))
    t.fd = fd
    # sock is the caller's argument, so it outlives the transfer
    t.fd_field = arraywire_socket_fd_field(<PyObject *>sock) if fd_field_found else &t.fd
    t.sending = sending
    t.iov = iov
    t.niov = niov
    t.total = total
    t.timeout = -1.0 if timeout is None else timeout
    t.reporting = progress is not None
    t.chunk = progress_chunk if t.reporting else max_chunk
    # Blocking sockets block in the calls themselves, unless progress must be
    # reported while waiting: then poll, which wakes for the report.
    t.poll_blocking = t.reporting and t.timeout < 0
    t.send_flags = MSG_NOSIGNAL | (MSG_DONTWAIT if t.poll_blocking else 0)
    # A blocking receive asks for MSG_WAITALL only for requests of at least
    # waitall_min: for smaller ones, sleeping until all of it arrived costs
    # more wake-ups than taking what is there and asking again (up to 1.6x
    # slower at 1 KiB-1 MiB with both processes on one CPU). Without
    # MSG_WAITALL a call sleeps only while it has nothing, so a signal then
    # gives EINTR; a short MSG_WAITALL call is taken as a signal (run()).
    t.recv_flags = MSG_DONTWAIT if t.poll_blocking else 0
    t.wait_all = t.timeout < 0 and not t.poll_blocking
    t.whole_call = t.sending and t.timeout < 0 and not t.poll_blocking
    t.in_main_thread = PyThread_get_thread_ident() == main_thread_ident
    t.last_activity = arraywire_monotonic()
    t.next_report = t.last_activity + progress_interval
    t.next_signal_check = t.last_activity + signal_check_interval
    try:
        drive(&t, progress)
    except BaseException as exc:
        mark_progress(exc, t.done)
        raise
    return t.total


cdef int acquire(object obj, Py_buffer *view, bint writable) except -1:
    """Take obj's buffer and apply _step.byte_view's checks, in order."""
    cdef const char *fmt
    try:
        PyObject_GetBuffer(obj, view, PyBUF_FULL_RO)
    except TypeError:
        raise not_a_buffer(obj) from None
    except (ValueError, BufferError):
        if not isinstance(obj, np.ndarray):
            raise
        # dtypes numpy will not export (datetime64, timedelta64): their bytes
        obj = numpy_bytes(obj, writable)
        PyObject_GetBuffer(obj, view, PyBUF_FULL_RO)
    try:
        if writable and view.readonly:
            raise read_only(obj)
        if not PyBuffer_IsContiguous(view, b"A"):
            raise not_contiguous(obj)
        fmt = view.format
        # One-character formats are the common case and need no parsing.
        if fmt != NULL and fmt[0] != 0 and (fmt[1] != 0 or fmt[0] == b"O"):
            if format_has_objects(fmt.decode("ascii", "replace")):
                raise object_items(obj)
    except BaseException:
        PyBuffer_Release(view)
        raise
    return 0


@cython.final
cdef class _HeldBuffers:
    """Buffers of a gather/scatter call, with an iovec for each non-empty one."""
    cdef Py_buffer *views
    cdef iovec *iov
    cdef Py_ssize_t held
    cdef Py_ssize_t niov
    cdef size_t total

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 1:
            capacity = 1
        self.views = <Py_buffer *>PyMem_Malloc(capacity * sizeof(Py_buffer))
        self.iov = <iovec *>PyMem_Malloc(capacity * sizeof(iovec))
        if self.views == NULL or self.iov == NULL:
            raise MemoryError()

    cdef int add(self, object obj, bint writable) except -1:
        cdef Py_buffer *view = &self.views[self.held]
        acquire(obj, view, writable)
        self.held += 1
        if view.len:
            self.iov[self.niov].iov_base = view.buf
            self.iov[self.niov].iov_len = <size_t>view.len
            self.niov += 1
            self.total += <size_t>view.len
        return 0

    cdef void release(self) noexcept:
        while self.held:
            self.held -= 1
            PyBuffer_Release(&self.views[self.held])

    def __dealloc__(self):
        PyMem_Free(self.views)
        PyMem_Free(self.iov)


cdef object SocketType = socket.socket
cdef object base_type = _socket.socket.type.__get__  # the plain int check_socket reads
cdef object base_fileno = _socket.socket.fileno
cdef object base_gettimeout = _socket.socket.gettimeout
cdef int SOCK_STREAM_ = socket.SOCK_STREAM


cdef tuple socket_checked(object sock):
    """check_socket(sock) without its Python-level lookups for a plain
    socket.socket that passes (a third of a small transfer's overhead);
    anything else goes through check_socket, for the shared errors."""
    if type(sock) is SocketType and base_type(sock) == SOCK_STREAM_:
        fd = base_fileno(sock)
        if fd != -1:
            return fd, base_gettimeout(sock)
    return check_socket(sock)


cdef object transfer_single(object obj, object sock, bint sending, object progress):
    cdef Py_buffer view
    cdef iovec iov
    fd, timeout = socket_checked(sock)
    acquire(obj, &view, not sending)
    try:
        iov.iov_base = view.buf
        iov.iov_len = <size_t>view.len
        return transfer(
            &iov, 1 if view.len else 0, iov.iov_len, sock, fd, timeout, sending, progress
        )
    finally:
        PyBuffer_Release(&view)


cdef object transfer_many(object buffers, object sock, bint sending, object progress):
    fd, timeout = socket_checked(sock)
    # A snapshot: a live list could grow (or lie about its length) while its
    # items are taken, past the capacity allocated for them.
    items = tuple(buffers)
    cdef _HeldBuffers held = _HeldBuffers(len(items))
    try:
        for obj in items:
            held.add(obj, not sending)
        return transfer(
            held.iov, held.niov, held.total, sock, fd, timeout, sending, progress
        )
    finally:
        held.release()


def send_from(obj, sock, *, progress=None):
    """Send every byte of a contiguous buffer over a connected stream socket.

    ``obj`` is anything exporting a C- or Fortran-contiguous buffer (numpy
    arrays of any non-object dtype, bytes, bytearray, memoryview, array.array,
    mmap). Its bytes go out in memory order with no header: the receiver must
    know the size (``send_array`` sends a self-describing message instead).
    The socket's timeout is an inactivity limit: TimeoutError only when no byte
    moved for that long. ``progress(bytes_done, bytes_total)`` is called about
    every 0.1 s and once at the end.

    Returns
    -------
    int
        The bytes sent: all of the buffer's.

    Raises
    ------
    TypeError
        Before any byte: sock is not a stream ``socket.socket`` (an
        ``ssl.SSLSocket`` included), or obj exports no buffer or holds Python
        objects.
    ValueError
        Before any byte: the buffer is not contiguous.
    OSError
        The socket's error (BrokenPipeError, ConnectionResetError, TimeoutError,
        BlockingIOError on a non-blocking socket, EBADF for a closed one), with
        ``bytes_done``: the bytes sent before it. An exception raised by
        progress or by a signal handler carries ``bytes_done`` too.
    """
    return transfer_single(obj, sock, True, progress)


def recv_into(obj, sock, *, progress=None):
    """Fill a writable contiguous buffer completely from a connected stream socket.

    ``obj`` is as for send_from, and writable; exactly its size in bytes is
    received, in memory order. The socket's timeout and ``progress`` are as for
    send_from.

    Returns
    -------
    int
        The bytes received: the buffer's size.

    Raises
    ------
    IncompleteTransferError
        The peer closed the connection before the buffer was full; its
        ``bytes_done`` bytes are in the buffer.
    TypeError
        Before any byte: as for send_from, or the buffer is read-only.
    ValueError
        Before any byte: the buffer is not contiguous.
    OSError
        As for send_from, ``bytes_done`` counting the bytes received.
    """
    return transfer_single(obj, sock, False, progress)


def sendmsg_from(buffers, sock, *, progress=None):
    """Send several contiguous buffers back to back with gather sendmsg calls.

    ``buffers`` is an iterable of what send_from takes; their bytes go out in
    order as one stream, up to IOV_MAX buffers a call, empty ones skipped. The
    socket's timeout and ``progress`` are as for send_from, over all the bytes.

    Returns
    -------
    int
        The bytes sent: the sum of the buffers' sizes.

    Raises
    ------
    TypeError, ValueError
        Before any byte, for the socket or any one buffer, as for send_from.
    OSError
        As for send_from, ``bytes_done`` counting over all the buffers.
    """
    return transfer_many(buffers, sock, True, progress)


def recvmsg_into(buffers, sock, *, progress=None):
    """Fill several writable contiguous buffers in order with scatter recvmsg calls.

    ``buffers`` is an iterable of what recv_into takes; the stream's bytes fill
    the first completely, then the next, up to IOV_MAX buffers a call, empty
    ones skipped. The socket's timeout and ``progress`` are as for send_from.

    Returns
    -------
    int
        The bytes received: the sum of the buffers' sizes.

    Raises
    ------
    IncompleteTransferError
        The peer closed the connection before every buffer was full;
        ``bytes_done`` counts over all the buffers.
    TypeError, ValueError
        Before any byte, for the socket or any one buffer, as for recv_into.
    OSError
        As for send_from, ``bytes_done`` counting over all the buffers.
    """
    return transfer_many(buffers, sock, False, progress)


def step_now(pending, sock, bint sending, size_t chunk, list counts):
    """One call of ``PendingViews.step`` (its views, its batching, its count
    appended to counts) on a socket that never waits, made without releasing
    the GIL: an event loop's non-blocking moves would otherwise wait up to the
    5 ms switch interval to take it back whenever another thread wants it.

    Raises
    ------
    OSError
        The socket's error, as the socket's own methods raise it
        (BlockingIOError when it would wait).
    """
    cdef list views = pending.views
    cdef Py_ssize_t first = pending.first
    cdef Py_ssize_t count = min(len(views) - first, iov_batch)
    cdef Py_ssize_t index
    cdef size_t budget = chunk
    cdef msghdr msg
    cdef ssize_t moved
    cdef int err
    fd, _ = socket_checked(sock)
    cdef _HeldBuffers held = _HeldBuffers(count)
    try:
        for index in range(count):
            view = views[first + index]
            if <size_t>len(view) >= budget:
                held.add(view[:budget], not sending)
                break
            held.add(view, not sending)
            budget -= <size_t>len(view)
        memset(&msg, 0, sizeof(msg))
        msg.msg_iov = held.iov
        msg.msg_iovlen = held.niov
        if sending:
            moved = sendmsg(<int>fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
        else:
            moved = recvmsg(<int>fd, &msg, MSG_DONTWAIT)
        if moved < 0:
            err = errno
            raise OSError(err, os.strerror(err))
        counts.append(moved)
    finally:
        held.release()


include "transport_c_buffers.pxi"
include "transport_c_remote.pxi"
