/* POSIX pieces the compiled transport needs, with the gaps of each platform
 * filled. Windows never compiles this module (setup.py builds it pure). */
#ifndef ARRAYWIRE_TRANSPORT_C_COMPAT_H
#define ARRAYWIRE_TRANSPORT_C_COMPAT_H

#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

/* macOS has no MSG_NOSIGNAL; CPython ignores SIGPIPE at start-up there too,
 * so a closed peer still gives EPIPE rather than killing the process. */
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static inline double arraywire_monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

static inline int arraywire_would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK;
}

/* CPython's socket object begins with the descriptor it owns, set to -1 when
 * it is closed (Modules/socketmodule.h, unchanged since Python 2; checked at
 * import). The transfer loop re-reads it before every call, as CPython's own
 * socket methods do, so a socket closed by another thread gives EBADF instead
 * of reaching whatever the descriptor number is reused for. */
typedef struct {
    PyObject_HEAD
    int sock_fd;
} arraywire_socket_head;

static inline const int *arraywire_socket_fd_field(PyObject *sock)
{
    return &((arraywire_socket_head *)sock)->sock_fd;
}

/* Read without the GIL while another thread may be closing the socket. */
static inline int arraywire_load_fd(const int *field)
{
    return __atomic_load_n(field, __ATOMIC_RELAXED);
}

/* process_vm_readv: Linux only (glibc 2.15, declared under _GNU_SOURCE,
 * which pyconfig.h sets); elsewhere the call fails with ENOSYS. */
static inline ssize_t arraywire_process_vm_readv(
    int pid, const struct iovec *local, unsigned long nlocal,
    const struct iovec *remote, unsigned long nremote)
{
#ifdef __linux__
    return process_vm_readv((pid_t)pid, local, nlocal, remote, nremote, 0);
#else
    (void)pid; (void)local; (void)nlocal; (void)remote; (void)nremote;
    errno = ENOSYS;
    return -1;
#endif
}

#endif
