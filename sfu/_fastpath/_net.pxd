# cython: language_level=3
# Batched UDP I/O declarations (Linux recvmmsg/sendmmsg, UDP GSO control messages) shared by
# the forwarder (_forward.pyx) and the bench's load generator (bench/_loadgen.pyx).
from posix.time cimport timespec

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    cmsghdr* CMSG_FIRSTHDR(msghdr* msg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags)
    int MSG_DONTWAIT
