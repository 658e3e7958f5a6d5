# The read-ahead Inbox and the Outbox of learned layouts, included by
# transport_c.pyx (one module: they share its transfer loop). Their Python
# twins are buffers.Inbox and buffers.Outbox.

cdef object ndarray_type = np.ndarray
cdef object numpy_empty = np.empty


# where the parts of a one-array version 1 header are (docs/PROTOCOL.md)
cdef enum:
    PREAMBLE_BYTES = 16
    NBYTES_AT = 16
    FORM_AT = 24  # ndim, order, dtype text length
    DIMS_AT = 28
    MAX_DIMS = 32

cdef unsigned long long numpy_limit = (1 << 63) - 1
cdef unsigned long long max_payload = MAX_PAYLOAD


cdef inline unsigned long long load_u64(const unsigned char *p) noexcept nogil:
    cdef unsigned long long value = 0
    cdef int i
    for i in range(7, -1, -1):
        value = (value << 8) | p[i]
    return value


cdef inline void store_u64(unsigned char *p, unsigned long long value) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = value & 0xFF
        value >>= 8


cdef int socket_fd(object sock, int *fd) except -1:
    """The socket's descriptor now (EBADF once closed)."""
    fd[0] = sock.fileno()
    if fd[0] == -1:
        raise OSError(EBADF, os.strerror(EBADF))
    return 0


cdef class _Layout:
    """What _transport_py._Layout holds: the parts of a learned one-array
    header that stay the same while the shape changes."""
    cdef object dtype
    cdef str order
    cdef int ndim
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t length     # the header's bytes
    cdef bytes template        # a learned header; nbytes and dims vary

    cdef int learn(self, bytes header, object dtype, str order) except -1:
        self.template = header
        self.dtype = dtype
        self.order = order
        self.ndim = (<const unsigned char *>PyBytes_AS_STRING(header))[FORM_AT]
        self.itemsize = dtype.itemsize
        self.length = PyBytes_GET_SIZE(header)
        return 0

    cdef bint matches(self, const unsigned char *p) noexcept:
        """Whether a header at p (length bytes) has the learned preamble,
        ndim, order and dtype text."""
        cdef const unsigned char *t = <const unsigned char *>PyBytes_AS_STRING(self.template)
        cdef Py_ssize_t text_at = DIMS_AT + 8 * self.ndim
        return (
            memcmp(p, t, PREAMBLE_BYTES) == 0
            and memcmp(p + FORM_AT, t + FORM_AT, DIMS_AT - FORM_AT) == 0
            and memcmp(p + text_at, t + text_at, self.length - text_at) == 0
        )


cdef object make_header(_Layout layout, tuple shape, Py_ssize_t nbytes):
    """The learned header with this shape and payload size."""
    cdef bytes header = PyBytes_FromStringAndSize(NULL, layout.length)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(header)
    cdef int i
    memcpy(p, PyBytes_AS_STRING(layout.template), layout.length)
    store_u64(p + NBYTES_AT, <unsigned long long>nbytes)
    for i in range(layout.ndim):
        store_u64(p + DIMS_AT + 8 * i, <unsigned long long>shape[i])
    return header


@cython.final
cdef class Inbox:
    """Twin of _transport_py.Inbox: a connection's read-ahead buffer."""
    cdef object sock
    cdef char *buffer
    cdef Py_ssize_t capacity
    cdef Py_ssize_t start
    cdef Py_ssize_t end
    cdef _Layout layout         # None until a header was learned
    cdef unsigned char last_dims[8 * MAX_DIMS]
    cdef tuple last_shape      # the shape of last_dims

    def __cinit__(self, sock, Py_ssize_t capacity=READ_AHEAD_BYTES):
        check_socket(sock)
        self.sock = sock
        self.capacity = capacity
        self.buffer = <char *>PyMem_Malloc(capacity if capacity > 0 else 1)
        if self.buffer == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.buffer)

    @property
    def buffered(self):
        """Bytes received and not yet taken."""
        return self.end - self.start

    def fill(self):
        """One receive into the free space, after moving what is buffered to
        the front; return its count (0: the peer closed)."""
        cdef int fd
        cdef ssize_t received
        cdef int err = 0
        cdef int ready
        cdef pollfd wanted
        cdef double timeout
        cdef double deadline = 0
        cdef double millis
        cdef int flags
        socket_fd(self.sock, &fd)
        value = self.sock.gettimeout()
        timeout = -1.0 if value is None else value
        flags = 0 if timeout < 0 else MSG_DONTWAIT
        if self.start:
            memmove(self.buffer, self.buffer + self.start, self.end - self.start)
            self.end -= self.start
            self.start = 0
        if timeout > 0:
            deadline = arraywire_monotonic() + timeout
        while True:
            ready = 1
            if timeout == 0:
                # A call that never waits keeps the GIL: releasing and taking
                # it back costs more, up to the 5 ms switch interval when
                # another thread wants it (an event loop's receive).
                received = recv(fd, self.buffer + self.end, self.capacity - self.end, flags)
                if received < 0:
                    err = errno
            else:
                with nogil:
                    received = recv(fd, self.buffer + self.end, self.capacity - self.end, flags)
                    if received < 0:
                        err = errno
                        if timeout > 0 and arraywire_would_block(err):
                            # sock_call_ex's order, reversed: try first, then wait
                            millis = ceil((deadline - arraywire_monotonic()) * 1000.0)
                            ready = 0
                            if millis > 0:
                                wanted.fd = fd
                                wanted.events = POLLIN
                                wanted.revents = 0
                                ready = poll(
                                    &wanted, 1, INT_MAX if millis > INT_MAX else <int>millis
                                )
                                if ready < 0:
                                    err = errno
            if received >= 0:
                self.end += received
                return received
            if err == EINTR:
                PyErr_CheckSignals()
                socket_fd(self.sock, &fd)
                continue
            if timeout > 0 and arraywire_would_block(err):
                if ready == 0:
                    raise socket.timeout("timed out")
                continue
            raise OSError(err, os.strerror(err))

    def take(self, obj):
        """Copy buffered bytes into the front of a writable buffer; return the count."""
        cdef Py_buffer view
        cdef Py_ssize_t count
        acquire(obj, &view, True)
        count = min(view.len, self.end - self.start)
        memcpy(view.buf, self.buffer + self.start, count)
        PyBuffer_Release(&view)
        self.start += count
        return count

    def preload(self, bytes data):
        """Buffer bytes read from the socket before this Inbox existed (an
        opening's), ahead of what it receives next."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        if self.end != self.start or size > self.capacity:
            raise ValueError("preload takes an empty Inbox and at most its capacity")
        memcpy(self.buffer, PyBytes_AS_STRING(data), size)
        self.start = 0
        self.end = size

    def learn(self, bytes header, dtype, tuple shape, str order):
        """Remember a decoded one-array header, so that take_array recognises
        headers of the same dtype, dimensions and order."""
        if not repeatable_dtype(dtype):
            return
        layout = _Layout()
        layout.learn(header, dtype, order)
        self.layout = layout
        self.last_shape = None

    def take_array(self, max_bytes):
        """The next message as a new array, when its header has the learned
        layout; else None. With nothing buffered, receives once first:
        EOFError if the peer closed. A payload not yet buffered whole is
        received straight into the array."""
        cdef _Layout layout = self.layout
        cdef const unsigned char *p
        cdef const unsigned char *dims
        cdef unsigned long long nbytes, dim
        cdef unsigned long long size
        cdef bint empty = False
        cdef Py_ssize_t available
        cdef int i
        if self.start == self.end and not self.fill():
            raise EOFError(CLEAN_END)
        if layout is None or self.end - self.start < layout.length:
            return None
        p = <const unsigned char *>self.buffer + self.start
        if not layout.matches(p):
            return None
        # the checks of _protocol._decode_one, in the same order
        nbytes = load_u64(p + NBYTES_AT)
        dims = p + DIMS_AT
        size = <unsigned long long>layout.itemsize
        for i in range(layout.ndim):
            dim = load_u64(dims + 8 * i)
            if dim == 0:
                empty = True
            elif size > numpy_limit // dim:
                return None
            else:
                size *= dim
        if (0 if empty else size) != nbytes or nbytes > max_payload:
            return None
        if max_bytes is not None and nbytes > max_bytes:
            return None
        if self.last_shape is None or memcmp(dims, self.last_dims, 8 * layout.ndim):
            self.last_shape = tuple([load_u64(dims + 8 * i) for i in range(layout.ndim)])
            memcpy(self.last_dims, dims, 8 * layout.ndim)
        array = numpy_empty(self.last_shape, layout.dtype, layout.order)
        available = self.end - self.start - layout.length
        if <unsigned long long>available >= nbytes:
            self.start += layout.length
            self.copy_out(array, nbytes)
            return array
        self.start += layout.length
        self.receive_rest(array, available, layout.length)
        return array

    cdef int copy_out(self, object array, Py_ssize_t count) except -1:
        cdef Py_buffer view
        PyObject_GetBuffer(array, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
        memcpy(view.buf, self.buffer + self.start, count)
        PyBuffer_Release(&view)
        self.start += count
        return 0

    cdef int receive_rest(self, object array, Py_ssize_t available, Py_ssize_t header) except -1:
        """Copy the buffered start of the payload, receive the rest into place."""
        cdef Py_buffer view
        cdef iovec iov
        cdef int fd
        PyObject_GetBuffer(array, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
        try:
            memcpy(view.buf, self.buffer + self.start, available)
            self.start = self.end = 0
            iov.iov_base = <char *>view.buf + available
            iov.iov_len = <size_t>(view.len - available)
            socket_fd(self.sock, &fd)
            transfer(&iov, 1, iov.iov_len, self.sock, fd, self.sock.gettimeout(), False, None)
        except BaseException as exc:
            # counted from the message start, as the engine counts
            exc.bytes_done = header + available + (getattr(exc, "bytes_done", None) or 0)
            if isinstance(exc, IncompleteTransferError):
                exc.bytes_expected = header + view.len
            raise
        finally:
            PyBuffer_Release(&view)
        return 0


@cython.final
cdef class Outbox:
    """Twin of _transport_py.Outbox: sends one-array messages of the learned
    dtype, dimensions and order, writing each header from the learned one."""
    cdef object sock
    cdef _Layout layout          # None until a header was learned
    cdef tuple last_shape
    cdef bytes header           # the header for last_shape

    def __cinit__(self, sock):
        check_socket(sock)
        self.sock = sock

    def learn(self, bytes header, dtype, tuple shape, str order):
        """Remember the header of a one-array message of this layout."""
        if not repeatable_dtype(dtype):
            return
        layout = _Layout()
        layout.learn(header, dtype, order)
        self.layout = layout
        self.last_shape = shape
        self.header = header

    cdef bint payload(self, object array, Py_buffer *view) except -1:
        """Take array's buffer when its layout is the one learned, and set the
        header for its shape."""
        cdef _Layout layout = self.layout
        if layout is None or type(array) is not ndarray_type or array.dtype is not layout.dtype:
            return False
        shape = array.shape
        if len(<tuple>shape) != layout.ndim:
            return False
        PyObject_GetBuffer(array, view, PyBUF_FULL_RO)
        if PyBuffer_IsContiguous(view, b"C"):
            order = "C"
        elif PyBuffer_IsContiguous(view, b"F"):
            order = "F"
        else:
            order = ""
        if order != layout.order:
            PyBuffer_Release(view)
            return False
        if shape != self.last_shape:
            self.header = make_header(layout, shape, view.len)
            self.last_shape = shape
        return True

    def send(self, array):
        """Send array as a message when its layout is the one learned; return
        the bytes sent, or None (nothing sent) for any other input."""
        cdef Py_buffer view
        cdef iovec iov[2]
        cdef int fd
        cdef Py_ssize_t niov = 1
        if not self.payload(array, &view):
            return None
        try:
            socket_fd(self.sock, &fd)
            iov[0].iov_base = PyBytes_AS_STRING(self.header)
            iov[0].iov_len = <size_t>PyBytes_GET_SIZE(self.header)
            if view.len:
                iov[1].iov_base = view.buf
                iov[1].iov_len = <size_t>view.len
                niov = 2
            return transfer(
                iov, niov, iov[0].iov_len + <size_t>view.len, self.sock, fd,
                self.sock.gettimeout(), True, None,
            )
        finally:
            PyBuffer_Release(&view)

    def pack(self, array, bytearray staging):
        """Append the message of array to staging when its layout is the one
        learned; return the bytes appended (0: none, for any other input)."""
        cdef Py_buffer view
        cdef Py_ssize_t size
        cdef Py_ssize_t old
        if not self.payload(array, &view):
            return 0
        try:
            size = PyBytes_GET_SIZE(self.header)
            old = PyByteArray_GET_SIZE(staging)
            PyByteArray_Resize(staging, old + size + view.len)
            memcpy(PyByteArray_AS_STRING(staging) + old, PyBytes_AS_STRING(self.header), size)
            memcpy(PyByteArray_AS_STRING(staging) + old + size, view.buf, view.len)
            return size + view.len
        finally:
            PyBuffer_Release(&view)
