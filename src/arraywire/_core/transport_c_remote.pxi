# Included by transport_c.pyx: copy_from_process, the one-copy read of
# another process's memory (process_vm_readv), with the GIL released for the
# whole loop as for the socket transfers.

from arraywire._core.remote import checked_pid, remote_ranges


cdef struct RemoteCopy:
    int pid
    iovec *remote           # the ranges still to read; remote[first] is trimmed as it moves
    Py_ssize_t nremote
    Py_ssize_t first
    char *dest
    size_t total
    size_t done
    size_t chunk            # most bytes asked of one call
    bint reporting
    bint in_main_thread
    double next_report
    double next_signal_check
    int err


cdef Status run_copy(RemoteCopy *c) noexcept nogil:
    """Read ranges until done, or until the GIL is needed."""
    cdef iovec local
    cdef iovec *cur
    cdef size_t budget
    cdef size_t asked
    cdef size_t saved_len
    cdef Py_ssize_t count
    cdef Py_ssize_t trimmed
    cdef ssize_t moved
    cdef size_t rest
    cdef double now
    while c.done < c.total:
        cur = &c.remote[c.first]
        budget = c.chunk
        asked = 0
        count = 0
        trimmed = -1
        saved_len = 0
        while c.first + count < c.nremote and count < iov_batch:
            if cur[count].iov_len >= budget:
                saved_len = cur[count].iov_len
                trimmed = count
                cur[count].iov_len = budget
                asked += budget
                count += 1
                break
            asked += cur[count].iov_len
            budget -= cur[count].iov_len
            count += 1
        local.iov_base = c.dest + c.done
        local.iov_len = asked
        moved = arraywire_process_vm_readv(c.pid, &local, 1, cur, count)
        if moved < 0:
            c.err = errno
        if trimmed >= 0:
            cur[trimmed].iov_len = saved_len
        if moved < 0:
            return CHECK_SIGNALS if c.err == EINTR else FAILED
        if moved == 0:
            # the next range is not readable as a whole
            c.err = EFAULT
            return FAILED
        c.done += <size_t>moved
        rest = <size_t>moved
        while rest:
            if rest >= c.remote[c.first].iov_len:
                rest -= c.remote[c.first].iov_len
                c.first += 1
            else:
                c.remote[c.first].iov_base = <char *>c.remote[c.first].iov_base + rest
                c.remote[c.first].iov_len -= rest
                rest = 0
        if c.reporting or c.in_main_thread:
            now = arraywire_monotonic()
            if c.reporting and now >= c.next_report and c.done < c.total:
                c.next_report = now + progress_interval
                return REPORT_PROGRESS
            if c.in_main_thread and now >= c.next_signal_check:
                c.next_signal_check = now + signal_check_interval
                return CHECK_SIGNALS
    return FINISHED


cdef int drive_copy(RemoteCopy *c, object progress) except -1:
    cdef Status status
    while True:
        with nogil:
            status = run_copy(c)
        if status == FINISHED:
            break
        elif status == CHECK_SIGNALS:
            PyErr_CheckSignals()
        elif status == REPORT_PROGRESS:
            progress(c.done, c.total)
        else:
            raise OSError(c.err, os.strerror(c.err))
    if progress is not None:
        progress(c.done, c.total)
    return 0


def copy_from_process(pid, ranges, obj, *, progress=None):
    """Fill a writable contiguous buffer with the bytes of another process's
    memory, read in one copy (Linux's ``process_vm_readv``).

    ``ranges`` is an iterable of ``(address, length)`` pairs in the process
    ``pid``; their bytes fill ``obj`` in order, and their lengths must add up
    to its size. The kernel allows it where ptrace would be: the same user
    and, under Yama's ``ptrace_scope``, a descendant process.
    ``progress(bytes_done, bytes_total)`` is called about every 0.1 s and
    once at the end.

    Returns
    -------
    int
        The bytes copied: the buffer's size.

    Raises
    ------
    TypeError
        Before any byte: obj exports no buffer, is read-only or holds Python
        objects; pid is not an int; a range is not a pair of ints.
    ValueError
        Before any byte: the buffer is not contiguous, pid is not positive, a
        range lies outside a 64-bit address space, or the ranges' lengths do
        not add up to the buffer's size.
    OSError
        The kernel's error (PermissionError: not allowed to read that process;
        ProcessLookupError: no such process; EFAULT: a range is not mapped
        there; ENOSYS: not Linux), with ``bytes_done``: the bytes copied
        before it. An exception raised by progress or by a signal handler
        carries ``bytes_done`` too.
    """
    cdef Py_buffer view
    cdef RemoteCopy c
    cdef Py_ssize_t index
    cdef double now
    acquire(obj, &view, True)
    try:
        memset(&c, 0, sizeof(c))
        c.pid = checked_pid(pid)
        pairs = remote_ranges(ranges, view.len)
        c.remote = <iovec *>PyMem_Malloc((len(pairs) or 1) * sizeof(iovec))
        if c.remote == NULL:
            raise MemoryError()
        for index, (address, length) in enumerate(pairs):
            c.remote[index].iov_base = <void *><size_t>address
            c.remote[index].iov_len = <size_t>length
        c.nremote = len(pairs)
        c.dest = <char *>view.buf
        c.total = <size_t>view.len
        c.reporting = progress is not None
        c.chunk = progress_chunk if c.reporting else max_chunk
        c.in_main_thread = PyThread_get_thread_ident() == main_thread_ident
        now = arraywire_monotonic()
        c.next_report = now + progress_interval
        c.next_signal_check = now + signal_check_interval
        try:
            drive_copy(&c, progress)
        except BaseException as exc:
            mark_progress(exc, c.done)
            raise
        return c.total
    finally:
        PyMem_Free(c.remote)
        PyBuffer_Release(&view)
