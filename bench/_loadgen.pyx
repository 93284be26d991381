# cython: language_level=3
"""Compiled send/receive loops of the load generator (contract: ``_loadgen_py.py``).

The same frame building, stamping, demultiplexing and receive accounting as the reference, in C
structs; :meth:`Engine.run` paces every sender's frames, SRTP-protects them with the fast-path
kernel and sends each frame with one ``sendmmsg``, and drains ready receivers with ``recvmmsg``
(``epoll`` tells which), unprotecting and accounting in place: all of it without the GIL, so
one core generates and checks far more packets than the server under test can forward.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from sfu._fastpath._net cimport (
    EINTR,
    MSG_DONTWAIT,
    errno,
    iovec,
    mmsghdr,
    msghdr,
    recvmmsg,
    sendmmsg,
    socklen_t,
)
from sfu._fastpath._srtp cimport (
    SrtpContext,
    srtp_protect_rtp,
    srtp_session_t,
    srtp_unprotect_rtp,
)

import threading

from bench._loadgen_py import (
    CONTROL_QUEUE,
    HIST_EDGES_NS,
    KIND_AUDIO,
    KIND_VIDEO,
    MAX_ARRIVALS as _PY_MAX_ARRIVALS,
    MAX_SSRCS as _PY_MAX_SSRCS,
    STAMP_OFFSET as _PY_STAMP_OFFSET,
    TEMPORAL_PATTERN as _PY_TEMPORAL_PATTERN,
    StreamSpec,
    check_spec,
)

__all__ = ["Engine", "FrameBuilder", "RecvStats", "bucket_of", "classify", "transport_seq"]


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLLIN
    int EPOLL_CTL_ADD
    int EPOLL_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* m, void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)


cdef enum:
    N_EDGES = 71
    N_BUCKETS = 72
    MAX_SSRCS = 16
    WINDOW = 1024
    WINDOW_WORDS = 16
    STAMP_OFFSET = 16
    VP8_DESCRIPTOR = 6
    MIN_PAYLOAD = 24
    MAX_EXT = 40
    BUF_SIZE = 1536
    MAX_FRAME_PACKETS = 64
    RECV_BATCH = 64
    RECV_ROUNDS = 8
    MAX_EVENTS = 256
    CONTROL_SLOT = 1500
    CONTROL_SLOTS = 4096
    MAX_CATCH_UP = 16
    KIND_VIDEO_C = 1
    MAX_ARRIVALS_C = 8192

# Codes shared with the reference (asserted equal at import below).
cdef enum:
    PKT_RTP = 0
    PKT_STUN = 1
    PKT_DTLS = 2
    PKT_RTCP = 3
    PKT_OTHER = 4
    RECV_NEW = 0
    RECV_REORDERED = 1
    RECV_DUPLICATE = 2
    RECV_UNTRACKED = 3
    RECV_BAD = 4

assert _PY_STAMP_OFFSET == STAMP_OFFSET and _PY_MAX_SSRCS == MAX_SSRCS
assert _PY_MAX_ARRIVALS == MAX_ARRIVALS_C
assert CONTROL_QUEUE == CONTROL_SLOTS and KIND_VIDEO == KIND_VIDEO_C and KIND_AUDIO == 0
assert len(HIST_EDGES_NS) == N_EDGES and tuple(_PY_TEMPORAL_PATTERN) == (0, 2, 1, 2)

cdef int64_t EDGES[N_EDGES]
for _i in range(N_EDGES):
    EDGES[_i] = HIST_EDGES_NS[_i]
cdef int TEMPORAL[4]
TEMPORAL[:] = [0, 2, 1, 2]


ctypedef struct stream_t:
    uint32_t ssrc
    int pt
    int kind
    int packet_size
    int ppf
    int kpf
    int64_t interval_ns
    int64_t scaled_ns
    int keyframe_interval
    uint32_t ts_step
    uint8_t ext[MAX_EXT]
    int ext_len
    int twcc_pos  # offset in ext of the transport-wide sequence number's 2 bytes; -1: none
    uint16_t seq
    uint32_t ts
    uint16_t pid
    uint8_t tl0
    uint64_t frames
    int keyframe_pending
    int64_t due_ns
    int endpoint
    int layer


ctypedef struct rstream_t:
    uint32_t ssrc
    int64_t unique
    int64_t dups
    int64_t reordered
    int64_t first
    int64_t highest
    int64_t nbytes
    uint64_t ring[WINDOW_WORDS]


ctypedef struct recv_t:
    int n
    rstream_t s[MAX_SSRCS]
    int64_t hist[N_BUCKETS]
    int64_t untracked
    int64_t bad


ctypedef struct arrival_t:
    int seq
    uint32_t ssrc
    int64_t at


ctypedef struct endpoint_t:
    int fd
    uint16_t tseq  # a sender's next transport-wide sequence number
    int twcc_id  # a receiver's transport-cc extension id (0: none)
    arrival_t* arrivals  # MAX_ARRIVALS_C slots when twcc_id, guarded by the control lock
    int n_arrivals
    int64_t arrivals_dropped
    int rtx_pt  # a receiver's RTX payload type (-1: none): counted apart, never accounted
    int64_t rtx_packets
    srtp_session_t* srtp
    recv_t* stats
    int64_t sent
    int64_t sent_bytes
    int64_t send_errors
    int64_t srtp_errors
    int64_t late_frames


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void put16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint64_t get64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


# -- streams -----------------------------------------------------------------------------


cdef int stream_init(stream_t* s, object spec) except -1:
    """Fill ``s`` from a checked StreamSpec, with the sender state at its start."""
    cdef int n = 0
    cdef bytes value
    check_spec(spec)
    memset(s, 0, sizeof(stream_t))
    s.ssrc = spec.ssrc
    s.pt = spec.payload_type
    s.kind = spec.kind
    s.packet_size = spec.packet_size
    s.ppf = spec.packets_per_frame
    s.kpf = spec.keyframe_packets
    s.interval_ns = spec.frame_interval_ns
    s.scaled_ns = spec.frame_interval_ns
    s.keyframe_interval = spec.keyframe_interval
    s.ts_step = spec.timestamp_step & 0xFFFFFFFF
    s.layer = spec.layer
    for ext_id, value in ((spec.mid_id, spec.mid), (spec.rid_id, spec.rid)):
        if ext_id and value:
            s.ext[n] = ((ext_id << 4) | (len(value) - 1)) & 0xFF
            memcpy(&s.ext[n + 1], PyBytes_AS_STRING(value), len(value))
            n += 1 + len(value)
    s.twcc_pos = -1
    if spec.twcc_id:
        s.ext[n] = ((spec.twcc_id << 4) | 1) & 0xFF
        s.twcc_pos = n + 1
        n += 3
    s.ext_len = n
    return 0


cdef inline int frame_begin(stream_t* s, int* keyframe, int* tid) noexcept nogil:
    """Decide the next frame (keyframe, temporal id, TL0PICIDX); returns its packet count."""
    cdef uint64_t n = s.frames
    cdef int key = n == 0 or s.keyframe_pending
    if s.keyframe_interval > 0 and n % <uint64_t>s.keyframe_interval == 0:
        key = 1
    s.keyframe_pending = 0
    cdef int t = 0 if key else TEMPORAL[n % 4]
    if t == 0 and n > 0:
        s.tl0 = (s.tl0 + 1) & 0xFF
    keyframe[0] = key
    tid[0] = t
    if key and s.kind == KIND_VIDEO_C:
        return s.kpf
    return s.ppf


cdef inline void frame_end(stream_t* s, int count) noexcept nogil:
    s.seq = (s.seq + count) & 0xFFFF
    s.ts = <uint32_t>(s.ts + s.ts_step)
    s.pid = (s.pid + 1) & 0x7FFF
    s.frames += 1


cdef Py_ssize_t build_packet(
    stream_t* s, uint8_t* buf, int index, int count, int keyframe, int tid, int64_t now,
    uint32_t twcc,
) noexcept nogil:
    """Packet ``index`` of the current frame into ``buf`` (>= packet_size bytes)."""
    cdef int size = s.packet_size
    cdef int pos = 12
    cdef int words, head, layer, width, height
    cdef uint64_t stamp = <uint64_t>now
    cdef int i
    memset(buf, 0, size)
    buf[0] = 0x90 if s.ext_len else 0x80
    buf[1] = (0x80 if index == count - 1 else 0) | s.pt
    put16(buf + 2, (s.seq + index) & 0xFFFF)
    put32(buf + 4, s.ts)
    put32(buf + 8, s.ssrc)
    if s.ext_len:
        words = (s.ext_len + 3) // 4
        buf[12] = 0xBE
        buf[13] = 0xDE
        put16(buf + 14, words)
        memcpy(buf + 16, s.ext, s.ext_len)
        if s.twcc_pos >= 0:
            put16(buf + 16 + s.twcc_pos, twcc & 0xFFFF)
        pos = 16 + words * 4
    if s.kind == KIND_VIDEO_C:
        buf[pos] = 0x80 | (0x10 if index == 0 else 0)
        buf[pos + 1] = 0xE0
        buf[pos + 2] = 0x80 | (s.pid >> 8)
        buf[pos + 3] = s.pid & 0xFF
        buf[pos + 4] = s.tl0
        buf[pos + 5] = (tid << 6) & 0xFF
        if index == 0:
            head = pos + VP8_DESCRIPTOR
            buf[head] = 0x10 if keyframe else 0x11
            buf[head + 1] = 0x02
            if keyframe:
                layer = s.layer if s.layer < 3 else 3
                width = 320 << layer
                height = 180 << layer
                buf[head + 3] = 0x9D
                buf[head + 4] = 0x01
                buf[head + 5] = 0x2A
                buf[head + 6] = width & 0xFF
                buf[head + 7] = (width >> 8) & 0xFF
                buf[head + 8] = height & 0xFF
                buf[head + 9] = (height >> 8) & 0xFF
    else:
        buf[pos] = 0x78
    for i in range(8):
        buf[pos + STAMP_OFFSET + i] = (stamp >> (56 - 8 * i)) & 0xFF
    return size


# -- receive accounting -------------------------------------------------------------------


cdef inline int classify_c(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    if n < 1:
        return PKT_OTHER
    cdef uint8_t b0 = p[0]
    if b0 <= 3:
        return PKT_STUN
    if 20 <= b0 <= 63:
        return PKT_DTLS
    if 128 <= b0 <= 191 and n >= 2:
        return PKT_RTCP if 64 <= (p[1] & 0x7F) <= 95 else PKT_RTP
    return PKT_OTHER


cdef inline int bucket_c(int64_t latency) noexcept nogil:
    """bisect_right(EDGES, max(0, latency))."""
    cdef int lo = 0
    cdef int hi = N_EDGES
    cdef int mid
    if latency < 0:
        latency = 0
    while lo < hi:
        mid = (lo + hi) >> 1
        if latency < EDGES[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline Py_ssize_t payload_offset(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    if n < 12 or (p[0] >> 6) != 2:
        return -1
    cdef Py_ssize_t pos = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if pos + 4 > n:
            return -1
        pos += 4 + 4 * ((<Py_ssize_t>p[pos + 2] << 8) | p[pos + 3])
    if pos > n:
        return -1
    return pos


cdef inline void ring_set(rstream_t* r, int64_t ext) noexcept nogil:
    cdef int64_t b = ext & (WINDOW - 1)
    r.ring[b >> 6] |= (<uint64_t>1) << (b & 63)


cdef inline void ring_clear(rstream_t* r, int64_t ext) noexcept nogil:
    cdef int64_t b = ext & (WINDOW - 1)
    r.ring[b >> 6] &= ~((<uint64_t>1) << (b & 63))


cdef inline int ring_get(rstream_t* r, int64_t ext) noexcept nogil:
    cdef int64_t b = ext & (WINDOW - 1)
    return (r.ring[b >> 6] >> (b & 63)) & 1


cdef inline void record_latency(
    recv_t* st, const uint8_t* p, Py_ssize_t n, Py_ssize_t pos, int64_t now
) noexcept nogil:
    if n - pos >= MIN_PAYLOAD:
        st.hist[bucket_c(now - <int64_t>get64(p + pos + STAMP_OFFSET))] += 1


cdef int account_packet(recv_t* st, const uint8_t* p, Py_ssize_t n, int64_t now) noexcept nogil:
    """Count one plaintext RTP packet (RecvStats.account of the reference)."""
    cdef Py_ssize_t pos = payload_offset(p, n)
    cdef int slot, k
    cdef rstream_t* r
    cdef uint32_t ssrc
    cdef int64_t seq, delta, ext, i
    cdef int code
    if pos < 0:
        st.bad += 1
        return RECV_BAD
    seq = (<int64_t>p[2] << 8) | p[3]
    ssrc = (<uint32_t>p[8] << 24) | (<uint32_t>p[9] << 16) | (<uint32_t>p[10] << 8) | p[11]
    slot = -1
    for k in range(st.n):
        if st.s[k].ssrc == ssrc:
            slot = k
            break
    if slot < 0:
        if st.n >= MAX_SSRCS:
            st.untracked += 1
            return RECV_UNTRACKED
        slot = st.n
        st.n += 1
        r = &st.s[slot]
        memset(r, 0, sizeof(rstream_t))
        r.ssrc = ssrc
        r.first = seq
        r.highest = seq
        ring_set(r, seq)
        r.unique = 1
        r.nbytes = n
        record_latency(st, p, n, pos, now)
        return RECV_NEW
    r = &st.s[slot]
    delta = (seq - r.highest) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    ext = r.highest + delta
    r.nbytes += n
    if ext > r.highest:
        if ext - r.highest >= WINDOW:
            memset(r.ring, 0, sizeof(r.ring))
        else:
            i = r.highest + 1
            while i < ext:
                ring_clear(r, i)
                i += 1
        ring_set(r, ext)
        r.highest = ext
        r.unique += 1
        code = RECV_NEW
    elif r.highest - ext < WINDOW:
        if ring_get(r, ext):
            r.dups += 1
            return RECV_DUPLICATE
        ring_set(r, ext)
        r.unique += 1
        r.reordered += 1
        code = RECV_REORDERED
    else:
        r.unique += 1
        r.reordered += 1
        code = RECV_REORDERED
    if ext < r.first:
        r.first = ext
    record_latency(st, p, n, pos, now)
    return code


cdef dict recv_snapshot(recv_t* st):
    cdef int k
    streams = [
        (
            st.s[k].ssrc, st.s[k].unique, st.s[k].dups, st.s[k].reordered, st.s[k].first,
            st.s[k].highest, st.s[k].nbytes,
        )
        for k in range(st.n)
    ]
    return {
        "streams": streams,
        "hist": [st.hist[k] for k in range(N_BUCKETS)],
        "untracked": st.untracked,
        "bad": st.bad,
    }


cdef int transport_seq_c(const uint8_t* p, Py_ssize_t n, int twcc_id) noexcept nogil:
    """The 16-bit transport-wide sequence number in one-byte element ``twcc_id``, or -1."""
    cdef Py_ssize_t pos, end
    cdef int ext_id, size
    if n < 12 or not p[0] & 0x10 or twcc_id < 1 or twcc_id > 14:
        return -1
    pos = 12 + 4 * (p[0] & 0x0F)
    if pos + 4 > n or p[pos] != 0xBE or p[pos + 1] != 0xDE:
        return -1
    end = pos + 4 + 4 * ((<Py_ssize_t>p[pos + 2] << 8) | p[pos + 3])
    if end > n:
        return -1
    pos += 4
    while pos < end:
        if p[pos] == 0:
            pos += 1
            continue
        ext_id = p[pos] >> 4
        size = (p[pos] & 0x0F) + 1
        if ext_id == 15 or pos + 1 + size > end:
            return -1
        if ext_id == twcc_id:
            return ((<int>p[pos + 1] << 8) | p[pos + 2]) if size == 2 else -1
        pos += 1 + size
    return -1


# -- Python-visible twins of the reference -------------------------------------------------


def transport_seq(packet, twcc_id):
    """The transport-wide sequence number of an RTP packet, or -1 (see the reference)."""
    cdef const uint8_t[::1] view = memoryview(packet).cast("B")
    if view.shape[0] == 0 or not 1 <= twcc_id <= 14:
        return -1
    return transport_seq_c(&view[0], view.shape[0], twcc_id)


def classify(data):
    """PKT_* kind of one datagram (see the reference)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    if view.shape[0] == 0:
        return PKT_OTHER
    return classify_c(&view[0], view.shape[0])


def bucket_of(latency_ns):
    """Histogram bucket of one latency."""
    return bucket_c(max(-1, min(latency_ns, 1 << 62)))


cdef class FrameBuilder:
    """Successive frames of one stream as plaintext RTP packets (see the reference)."""

    cdef stream_t s
    cdef readonly object spec

    def __init__(self, spec, seq=0, timestamp=0):
        stream_init(&self.s, spec)
        self.spec = spec
        self.s.seq = seq & 0xFFFF
        self.s.ts = timestamp & 0xFFFFFFFF

    @property
    def seq(self):
        return self.s.seq

    @property
    def timestamp(self):
        return self.s.ts

    @property
    def picture_id(self):
        return self.s.pid

    @property
    def tl0(self):
        return self.s.tl0

    @property
    def frames(self):
        return self.s.frames

    @property
    def keyframe_pending(self):
        return bool(self.s.keyframe_pending)

    def request_keyframe(self):
        """Make the next frame a keyframe."""
        self.s.keyframe_pending = 1

    def frame(self, now_ns, transport_seq=0):
        """The packets of the next frame, each stamped with ``now_ns`` (transport-wide
        sequence numbers from ``transport_seq`` on when the spec has a ``twcc_id``)."""
        cdef uint32_t tseq = transport_seq & 0xFFFF
        cdef int key, tid, i
        cdef int count = frame_begin(&self.s, &key, &tid)
        cdef int64_t now = now_ns
        cdef bytes pkt
        out = []
        for i in range(count):
            pkt = PyBytes_FromStringAndSize(NULL, self.s.packet_size)
            build_packet(
                &self.s, <uint8_t*>PyBytes_AS_STRING(pkt), i, count, key, tid, now, tseq + i
            )
            out.append(pkt)
        frame_end(&self.s, count)
        return out


cdef class RecvStats:
    """Per-SSRC receive accounting and latency histogram (see the reference)."""

    cdef recv_t* st

    def __cinit__(self):
        self.st = <recv_t*>calloc(1, sizeof(recv_t))
        if self.st is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.st)

    def account(self, packet, now_ns):
        """Count one plaintext RTP packet received at ``now_ns``; returns a RECV_* code."""
        cdef const uint8_t[::1] view = memoryview(packet).cast("B")
        cdef int64_t now = now_ns
        if view.shape[0] == 0:
            self.st.bad += 1
            return RECV_BAD
        return account_packet(self.st, &view[0], view.shape[0], now)

    def snapshot(self):
        """Counters as plain data (same layout as the reference)."""
        return recv_snapshot(self.st)


# -- the engine ----------------------------------------------------------------------------


cdef class Engine:
    """Senders and receivers of one run, driven without the GIL (see the reference)."""

    cdef endpoint_t* eps
    cdef stream_t* streams
    cdef int n_eps
    cdef int n_streams
    cdef readonly int max_endpoints
    cdef int max_streams
    cdef int epfd
    cdef double rate
    cdef volatile int stop_flag
    cdef int running
    cdef list contexts
    cdef list sockets
    # control queue: fixed slots, guarded by a mutex (Python takes them while a run goes on)
    cdef uint8_t* ctl_data
    cdef int* ctl_len
    cdef int* ctl_ep
    cdef int ctl_n
    cdef readonly int64_t control_dropped_c
    cdef pthread_mutex_t ctl_lock
    # per-run scratch: send and receive batches
    cdef uint8_t* sbuf
    cdef uint8_t* rbuf
    cdef mmsghdr smsgs[MAX_FRAME_PACKETS]
    cdef iovec siov[MAX_FRAME_PACKETS]
    cdef mmsghdr rmsgs[RECV_BATCH]
    cdef iovec riov[RECV_BATCH]

    def __cinit__(self, int max_endpoints=4096):
        if not 1 <= max_endpoints <= 65536:
            raise ValueError("max_endpoints must be in [1, 65536]")
        self.max_endpoints = max_endpoints
        self.max_streams = max_endpoints * 4
        self.eps = <endpoint_t*>calloc(max_endpoints, sizeof(endpoint_t))
        self.streams = <stream_t*>calloc(self.max_streams, sizeof(stream_t))
        self.ctl_data = <uint8_t*>malloc(CONTROL_SLOTS * CONTROL_SLOT)
        self.ctl_len = <int*>calloc(CONTROL_SLOTS, sizeof(int))
        self.ctl_ep = <int*>calloc(CONTROL_SLOTS, sizeof(int))
        self.sbuf = <uint8_t*>malloc(MAX_FRAME_PACKETS * BUF_SIZE)
        self.rbuf = <uint8_t*>malloc(RECV_BATCH * BUF_SIZE)
        self.epfd = -1
        if (
            self.eps is NULL or self.streams is NULL or self.ctl_data is NULL
            or self.ctl_len is NULL or self.ctl_ep is NULL or self.sbuf is NULL
            or self.rbuf is NULL
        ):
            raise MemoryError()
        pthread_mutex_init(&self.ctl_lock, NULL)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.rate = 1.0
        self.contexts = []
        self.sockets = []
        cdef int i
        for i in range(MAX_FRAME_PACKETS):
            self.siov[i].iov_base = self.sbuf + i * BUF_SIZE
            memset(&self.smsgs[i], 0, sizeof(mmsghdr))
            self.smsgs[i].msg_hdr.msg_iov = &self.siov[i]
            self.smsgs[i].msg_hdr.msg_iovlen = 1
        for i in range(RECV_BATCH):
            self.riov[i].iov_base = self.rbuf + i * BUF_SIZE
            self.riov[i].iov_len = BUF_SIZE
            memset(&self.rmsgs[i], 0, sizeof(mmsghdr))
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        cdef int i
        if self.eps is not NULL:
            for i in range(self.n_eps):
                free(self.eps[i].stats)
                free(self.eps[i].arrivals)
        free(self.eps)
        free(self.streams)
        free(self.ctl_data)
        free(self.ctl_len)
        free(self.ctl_ep)
        free(self.sbuf)
        free(self.rbuf)
        if self.epfd >= 0:
            close(self.epfd)
            pthread_mutex_destroy(&self.ctl_lock)

    cdef int _add(self, object sock, object ctx, bint outbound) except -1:
        if self.running:
            raise RuntimeError("cannot add endpoints while the engine runs")
        if self.n_eps >= self.max_endpoints:
            raise ValueError("too many endpoints")
        if not isinstance(ctx, SrtpContext):
            raise TypeError("the compiled engine needs the compiled SrtpContext")
        cdef srtp_session_t* session = (<SrtpContext>ctx)._ready(outbound)
        cdef int fd = sock.fileno()
        cdef int i
        for i in range(self.n_eps):
            if self.eps[i].fd == fd:
                raise ValueError("socket already added")
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = self.n_eps
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl failed")
        cdef endpoint_t* ep = &self.eps[self.n_eps]
        memset(ep, 0, sizeof(endpoint_t))
        ep.fd = fd
        ep.srtp = session
        self.contexts.append(ctx)
        self.sockets.append(sock)
        self.n_eps += 1
        return self.n_eps - 1

    def add_sender(self, sock, srtp, specs, start_ns):
        """A publisher: its streams' first frames are due at ``start_ns``; returns its index."""
        specs = list(specs)
        if self.n_streams + len(specs) > self.max_streams:
            raise ValueError("too many streams")
        for spec in specs:
            check_spec(spec)
        cdef int index = self._add(sock, srtp, True)
        cdef stream_t* s
        for spec in specs:
            s = &self.streams[self.n_streams]
            stream_init(s, spec)
            s.endpoint = index
            s.due_ns = start_ns
            s.scaled_ns = max(1, <int64_t>(s.interval_ns / self.rate))
            self.n_streams += 1
        return index

    def add_receiver(self, sock, srtp, int twcc_id=0, int rtx_pt=-1):
        """A subscriber: every RTP packet on ``sock`` is unprotected and accounted; with a
        ``twcc_id`` (1..14) its transport-wide sequence number is recorded too; packets of
        payload type ``rtx_pt`` (0..127; -1: none) are counted apart, not accounted."""
        if not 0 <= twcc_id <= 14:
            raise ValueError("the transport-cc extension id must be 0..14")
        if not -1 <= rtx_pt <= 127:
            raise ValueError("the RTX payload type must be 0..127 or -1")
        cdef recv_t* st = <recv_t*>calloc(1, sizeof(recv_t))
        cdef arrival_t* arrivals = NULL
        if st is NULL:
            raise MemoryError()
        if twcc_id:
            arrivals = <arrival_t*>calloc(MAX_ARRIVALS_C, sizeof(arrival_t))
            if arrivals is NULL:
                free(st)
                raise MemoryError()
        try:
            index = self._add(sock, srtp, False)
        except BaseException:
            free(st)
            free(arrivals)
            raise
        self.eps[index].stats = st
        self.eps[index].twcc_id = twcc_id
        self.eps[index].arrivals = arrivals
        self.eps[index].rtx_pt = rtx_pt
        return index

    def take_arrivals(self, int index):
        """A receiver's recorded (transport-wide sequence number, SSRC, arrival ns) since
        the last take, in arrival order (empty without a ``twcc_id``)."""
        if not 0 <= index < self.n_eps:
            raise IndexError(index)
        cdef endpoint_t* ep = &self.eps[index]
        cdef int i
        if ep.stats is NULL:
            raise ValueError("not a receiver")
        if ep.arrivals is NULL:
            return []
        pthread_mutex_lock(&self.ctl_lock)
        try:
            out = [
                (ep.arrivals[i].seq, ep.arrivals[i].ssrc, ep.arrivals[i].at)
                for i in range(ep.n_arrivals)
            ]
            ep.n_arrivals = 0
        finally:
            pthread_mutex_unlock(&self.ctl_lock)
        return out

    def arrivals_dropped(self, int index):
        """Arrivals a receiver dropped because MAX_ARRIVALS were waiting."""
        if not 0 <= index < self.n_eps:
            raise IndexError(index)
        return self.eps[index].arrivals_dropped

    def set_rate(self, double multiplier):
        """Send frames ``multiplier`` times as often as their specs say."""
        if not 0.01 <= multiplier <= 1000:
            raise ValueError("rate multiplier must be in [0.01, 1000]")
        if self.running:
            raise RuntimeError("set the rate between runs")
        self.rate = multiplier
        cdef int k
        for k in range(self.n_streams):
            self.streams[k].scaled_ns = max(1, <int64_t>(self.streams[k].interval_ns / multiplier))

    def request_keyframe(self, int index):
        """Make the next frame of every video stream of sender ``index`` a keyframe."""
        if not 0 <= index < self.n_eps:
            raise IndexError(index)
        cdef int k
        for k in range(self.n_streams):
            if self.streams[k].endpoint == index and self.streams[k].kind == KIND_VIDEO_C:
                self.streams[k].keyframe_pending = 1

    def stop(self):
        """Make a running :meth:`run` return soon (thread-safe)."""
        self.stop_flag = 1

    @property
    def control_dropped(self):
        return self.control_dropped_c

    def control(self):
        """Take the queued non-media datagrams as (endpoint index, datagram)."""
        cdef int i
        pthread_mutex_lock(&self.ctl_lock)
        try:
            out = [
                (self.ctl_ep[i], PyBytes_FromStringAndSize(
                    <char*>self.ctl_data + i * CONTROL_SLOT, self.ctl_len[i]))
                for i in range(self.ctl_n)
            ]
            self.ctl_n = 0
        finally:
            pthread_mutex_unlock(&self.ctl_lock)
        return out

    def receiver_snapshot(self, int index):
        """A receiver's counters (RecvStats.snapshot layout) plus its SRTP failures."""
        if not 0 <= index < self.n_eps:
            raise IndexError(index)
        if self.eps[index].stats is NULL:
            raise ValueError("not a receiver")
        snap = recv_snapshot(self.eps[index].stats)
        snap["srtp_errors"] = self.eps[index].srtp_errors
        snap["rtx"] = self.eps[index].rtx_packets
        return snap

    def sender_counters(self, int index):
        """Packets and bytes a sender sent, failed sends and frames skipped as late."""
        if not 0 <= index < self.n_eps:
            raise IndexError(index)
        cdef endpoint_t* ep = &self.eps[index]
        return {
            "packets": ep.sent,
            "bytes": ep.sent_bytes,
            "send_errors": ep.send_errors,
            "late_frames": ep.late_frames,
        }

    def run(self, double duration_s):
        """Send and receive for ``duration_s`` (or until :meth:`stop`); returns packets moved."""
        if self.running:
            raise RuntimeError("the engine is already running")
        if not 0 <= duration_s <= 3600:
            raise ValueError("duration must be in [0, 3600] s")
        cdef int64_t until = mono_ns() + <int64_t>(duration_s * 1e9)
        cdef int64_t moved = 0
        for ctx in self.contexts:
            (<SrtpContext>ctx).busy = True
        self.running = 1
        self.stop_flag = 0
        try:
            with nogil:
                moved = self._loop(until)
        finally:
            self.running = 0
            for ctx in self.contexts:
                (<SrtpContext>ctx).busy = False
        return moved

    cdef int64_t _loop(self, int64_t until) noexcept nogil:
        cdef int64_t moved = 0
        cdef int64_t now, next_due, due, wait
        cdef int k, nev, i, timeout, burst
        cdef stream_t* s
        cdef epoll_event events[MAX_EVENTS]
        while not self.stop_flag:
            now = mono_ns()
            if now >= until:
                break
            next_due = until
            for k in range(self.n_streams):
                s = &self.streams[k]
                burst = 0
                while now >= s.due_ns and burst < MAX_CATCH_UP:
                    moved += self._send_frame(s, now)
                    burst += 1
                    due = s.due_ns + s.scaled_ns
                    if due < now - 1000000000:
                        self.eps[s.endpoint].late_frames += 1
                        due = now + s.scaled_ns
                    s.due_ns = due
                if s.due_ns < next_due:
                    next_due = s.due_ns
            wait = next_due - mono_ns()
            if wait <= 0:
                timeout = 0
            else:
                timeout = <int>((wait + 999999) // 1000000)
                if timeout > 5:
                    timeout = 5
            nev = epoll_wait(self.epfd, events, MAX_EVENTS, timeout)
            for i in range(nev):
                moved += self._drain(<int>events[i].data.u64)
        return moved

    cdef int64_t _send_frame(self, stream_t* s, int64_t now) noexcept nogil:
        cdef endpoint_t* ep = &self.eps[s.endpoint]
        cdef int key, tid, i, n, done, r
        cdef int count = frame_begin(s, &key, &tid)
        cdef Py_ssize_t length
        if count > MAX_FRAME_PACKETS:
            count = MAX_FRAME_PACKETS
        n = 0
        now = mono_ns()  # the stamp: as close to the send as a frame allows
        for i in range(count):
            length = build_packet(
                s, self.sbuf + n * BUF_SIZE, i, count, key, tid, now, <uint32_t>ep.tseq + i
            )
            length = srtp_protect_rtp(ep.srtp, self.sbuf + n * BUF_SIZE, length, BUF_SIZE)
            if length < 0:
                ep.send_errors += 1
                continue
            self.siov[n].iov_len = length
            n += 1
        frame_end(s, count)
        if s.twcc_pos >= 0:
            ep.tseq = (ep.tseq + count) & 0xFFFF
        done = 0
        while done < n:
            r = sendmmsg(ep.fd, &self.smsgs[done], n - done, MSG_DONTWAIT)
            if r < 0:
                if errno == EINTR:
                    continue
                ep.send_errors += n - done
                break
            for i in range(done, done + r):
                ep.sent_bytes += self.siov[i].iov_len
            ep.sent += r
            done += r
        return done

    cdef int64_t _drain(self, int index) noexcept nogil:
        cdef endpoint_t* ep = &self.eps[index]
        cdef int64_t moved = 0
        cdef int round_, r, i, kind, tseq, code
        cdef Py_ssize_t n
        cdef uint8_t* p
        cdef int64_t now
        for round_ in range(RECV_ROUNDS):
            r = recvmmsg(ep.fd, self.rmsgs, RECV_BATCH, MSG_DONTWAIT, NULL)
            if r <= 0:
                if r < 0 and errno == EINTR:
                    continue
                break
            now = mono_ns()
            for i in range(r):
                p = self.rbuf + i * BUF_SIZE
                n = self.rmsgs[i].msg_len
                kind = classify_c(p, n)
                if kind == PKT_RTP and ep.stats is not NULL:
                    n = srtp_unprotect_rtp(ep.srtp, p, n)
                    if n < 0:
                        ep.srtp_errors += 1
                        continue
                    if n >= 12 and (p[1] & 0x7F) == ep.rtx_pt:
                        ep.rtx_packets += 1
                        code = RECV_UNTRACKED
                    else:
                        code = account_packet(ep.stats, p, n, now)
                    if code != RECV_BAD and ep.twcc_id:
                        tseq = transport_seq_c(p, n, ep.twcc_id)
                        if tseq >= 0:
                            self._arrival(ep, tseq, p, now)
                    moved += 1
                else:
                    self._enqueue(index, p, n)
            if r < RECV_BATCH:
                break
        return moved

    cdef void _arrival(
        self, endpoint_t* ep, int tseq, const uint8_t* p, int64_t now
    ) noexcept nogil:
        pthread_mutex_lock(&self.ctl_lock)
        if ep.n_arrivals < MAX_ARRIVALS_C:
            ep.arrivals[ep.n_arrivals].seq = tseq
            ep.arrivals[ep.n_arrivals].ssrc = (
                (<uint32_t>p[8] << 24) | (<uint32_t>p[9] << 16) | (<uint32_t>p[10] << 8) | p[11]
            )
            ep.arrivals[ep.n_arrivals].at = now
            ep.n_arrivals += 1
        else:
            ep.arrivals_dropped += 1
        pthread_mutex_unlock(&self.ctl_lock)

    cdef void _enqueue(self, int index, const uint8_t* p, Py_ssize_t n) noexcept nogil:
        if n > CONTROL_SLOT:
            n = CONTROL_SLOT
        pthread_mutex_lock(&self.ctl_lock)
        if self.ctl_n < CONTROL_SLOTS:
            memcpy(self.ctl_data + self.ctl_n * CONTROL_SLOT, p, n)
            self.ctl_len[self.ctl_n] = <int>n
            self.ctl_ep[self.ctl_n] = index
            self.ctl_n += 1
        else:
            self.control_dropped_c += 1
        pthread_mutex_unlock(&self.ctl_lock)
