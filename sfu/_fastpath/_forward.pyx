# cython: language_level=3
"""Compiled forwarder: the data plane's per-packet path in C; contract in ``_forward_py.py``.

The media socket is read in batches with ``recvmmsg``; for RTP of registered streams the
whole path runs without the GIL: SRTP unprotect (OpenSSL EVP through ``_srtp``), one parse of
the RTP header into ``rtp_view_t`` (``_rtp.pxd``) that every later step reads, sequence
unwrap, retransmission-cache write, VP8 descriptor parse, then per route the layer decision,
munging (sequence number, timestamp, SSRC, payload type), VP8 picture id / TL0PICIDX / KEYIDX,
header-extension ids and abs-send-time, NACK history, sender counters, SRTP protect, and a
batched ``sendmmsg``. The per-packet state lives in the C structs of the same objects the
control plane configures (``SimulcastSelector``, ``RtpMunger``, ``Vp8Munger``,
``ExtensionRewriter``, ``RetransmissionBuffer``, ``RouteState``, ``SequenceUnwrapper``), so
both sides always see one state. Anything else goes back to Python as the slow path.

The node link socket is read the same way (``pump_link``): a sealed lane datagram of a
registered relay input (a peer node's address and its lane's ``LaneOpener``) is opened in
place, its flow id decoded, and RTP of a routed flow whose SSRC is a stream of the flow's
plaintext source goes down the same ``_ingest`` as :meth:`Forwarder.ingest`'s packets, with
no Python object per packet; what opened but is not ours is kept for Python
(``drain_relay_in``), the rest is the slow path.
"""

import socket

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.math cimport INFINITY, nearbyint
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from sfu._fastpath._bwe cimport SendHistory, history_record, history_t
from sfu._fastpath._cache cimport RetransmissionBuffer, cache_put, cache_t
from sfu._fastpath._pacer cimport (
    Pacer,
    pacer_begin,
    pacer_end,
    pacer_next,
    pacer_next_deadline,
    pacer_push,
    pacer_t,
    pacer_take,
)
from sfu._fastpath._extensions cimport ExtensionRewriter, ext_apply_view, ext_rewriter_t
from sfu._fastpath._lane cimport (
    LANE_HEADER_BYTES,
    LANE_TAG_BYTES,
    LaneOpener,
    RelayOutput,
    lane_open,
    lane_seal,
    opener_t,
    relay_out_t,
)
from sfu._fastpath._layers cimport (
    SimulcastSelector,
    selector_current_spatial,
    selector_decide,
    selector_t,
)
from sfu._fastpath._net cimport (
    AF_INET,
    AF_INET6,
    CMSG_DATA,
    CMSG_FIRSTHDR,
    CMSG_LEN,
    CMSG_SPACE,
    EAGAIN,
    EINTR,
    EWOULDBLOCK,
    MSG_DONTWAIT,
    cmsghdr,
    errno,
    htons,
    inet_ntop,
    inet_pton,
    iovec,
    mmsghdr,
    msghdr,
    ntohl,
    ntohs,
    recvmmsg,
    sa_family_t,
    sendmmsg,
    sockaddr,
    sockaddr_in,
    sockaddr_in6,
    sockaddr_storage,
    socklen_t,
)
from sfu._fastpath._munger cimport (
    RtpMunger,
    munger_drop,
    munger_last_out_seq,
    munger_munge_view,
    munger_switch_source,
    munger_t,
)
from sfu._fastpath._rtp cimport (
    RTP_DEFECT_EXT_ELEMENT, RTP_DEFECT_HEADER, RTP_DEFECT_NO_PAYLOAD, RTP_DEFECT_NONE, RTP_OK,
    rtp_ext_find, rtp_parse, rtp_view_t,
)
from sfu._fastpath._srtp cimport (
    SrtpContext,
    srtp_protect_rtp_header,
    srtp_session_t,
    srtp_unprotect_rtp,
)
from sfu._fastpath._vp8 cimport (
    Vp8Munger,
    vp8_apply,
    vp8_desc_t,
    vp8_drop,
    vp8_munger_t,
    vp8_parse,
    vp8_switch_source,
    vp8_translate,
    vp8_translation_t,
)

from sfu._fastpath.values import HistoryEntry


cdef extern from *:
    """
    #include <netinet/udp.h>
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    """
    int SOL_UDP
    int UDP_SEGMENT

#: The third element of a framed (ICE-TCP) peer's address (values.FRAMED_MARK).
FRAMED_MARK = "tcp"

# Same values as _forward_py.py.
AUDIO = 0
VP8 = 1
F_HEADER_BAD = 1
F_MALFORMED_EXT = 2
F_MALFORMED_PAYLOAD = 4
F_TWCC = 8
F_PADDING = 16
F_KEYFRAME = 32
F_LEVEL = 64
F_VAD = 128
PUMP_BATCH = 64
PUMP_ROUNDS = 8

# Pacer classes of forwarded media (``_pacer_py.AUDIO`` / ``VIDEO``).
cdef enum:
    P_AUDIO = 0
    P_VIDEO = 3

cdef enum:
    FL_HEADER_BAD = 1
    FL_MALFORMED_EXT = 2
    FL_MALFORMED_PAYLOAD = 4
    FL_TWCC = 8
    FL_PADDING = 16
    FL_KEYFRAME = 32
    FL_LEVEL = 64
    FL_VAD = 128
    FL_REASON_SHIFT = 16        # values.F_REASON_SHIFT: why a refused packet was refused
    REFUSED_PAYLOAD_TYPE = 8    # values.REFUSED_PAYLOAD_TYPE
    REFUSED_DESCRIPTOR = 9      # values.REFUSED_DESCRIPTOR
    K_AUDIO = 0
    K_VP8 = 1
    HISTORY = 1024              # sfu.core.route_state.HISTORY
    HISTORY_MASK = 1023
    BATCH = 64                  # datagrams per recvmmsg
    ROUNDS = 8                  # recvmmsg calls per pump before yielding to the event loop
    RECV_SIZE = 8192            # receive slot: larger datagrams are truncated -> slow path
    WORK_SIZE = 2048
    OUT_SLOTS = 512             # egress packets per sendmmsg flush
    OUT_SIZE = 1536             # egress slot: 1500 (the munger's limit) + SRTP trailer
    MUNGE_LIMIT = 1500          # the reference's Subscription.buf size
    TX_STREAMS = 64             # ingress streams per transport (MAX_STREAMS is 32)
    LATENCY_SLOTS = 4096
    RELAY_SLOTS = 1024          # relayed packets between drain_relay() calls (a pump is 512)
    RELAY_OUTPUTS = 32          # _lane_shared.MAX_RELAY_OUTPUTS: a bit each in a log entry
    RELAY_SEND_SLOTS = 256      # relay datagrams per flush (a full batch flushes early)
    RELAY_SEND_SIZE = 2112      # a relay datagram: lane header, prefix, WORK_SIZE, tag
    GSO_SEGMENTS = 32           # most packets in one UDP GSO send (the kernel allows 64)
    CMSG_SIZE = 32              # room for one UDP_SEGMENT control message
    RELAY_INPUTS = 64           # _lane_shared.MAX_RELAY_INPUTS: peer nodes opened here
    INPUT_FLOWS = 4096          # _lane_shared.MAX_INPUT_FLOWS: flows routed per relay input
    RELAY_IN_SLOTS = 1024       # _lane_shared.RELAY_IN_SLOTS: opened datagrams kept for Python
    FIXED_BIT = 0x40            # _lane_shared.QUIC_FIXED_BIT: clear in a lane datagram
    LINK_SLOW = 1               # pump_link: a slot for the slow path (not a relay input's)
    LINK_KEPT = 2               # ...opened, kept for drain_relay_in()

cdef struct addr_key_t:
    int family                  # AF_INET/AF_INET6, | FRAMED_KEY for an ICE-TCP peer
    uint16_t port
    uint8_t ip[16]

cdef enum:
    # Marks the key of a framed (ICE-TCP) peer, so it never equals a UDP peer's of the same
    # host and port; its address is ``(host, port, "tcp")`` (values.FRAMED_MARK).
    FRAMED_KEY = 0x10000

cdef struct route_state_t:
    bint blocked
    long long forwarded
    long long packets_sent
    long long octets_sent
    uint32_t last_rtp_ts
    bint has_last_at
    double last_at
    int32_t h_out[HISTORY]
    int64_t h_in[HISTORY]
    uint32_t h_ts[HISTORY]
    int32_t h_layer[HISTORY]
    uint8_t h_vp8[HISTORY]
    int64_t h_pid[HISTORY]
    int16_t h_tl0[HISTORY]
    int16_t h_key[HISTORY]

cdef struct unwrap_t:
    bint has_last
    long long last

cdef struct tx_t:
    bint used
    addr_key_t key
    sockaddr_storage sa
    socklen_t salen
    srtp_session_t* inbound
    srtp_session_t* outbound
    int twcc_id
    int level_id
    int drop_every              # impairment for tests and drills: drop every n-th egress packet
    unsigned long long drop_seen
    bint framed                 # ICE-TCP: egress is handed back (drain_framed), never sent
    bint source                 # a plaintext source (set_source): ingress only, by ingest()
    pacer_t* pacer              # not NULL: egress is queued there (set_pacer), not sent
    history_t* paced_history    # the send history whose numbers tag the queued packets
    bint paced_pending          # listed in paced_list (stays so while its slot is reused)
    int nstreams
    uint32_t ssrcs[TX_STREAMS]
    int streams[TX_STREAMS]

cdef struct route_t:
    int out
    selector_t* selector
    munger_t* munger
    vp8_munger_t* vp8
    ext_rewriter_t* ext
    route_state_t* state
    history_t* history          # the subscriber transport's send history (NULL: no stamping)

cdef struct stream_t:
    bint used
    int transport
    uint32_t ssrc
    int layer
    int kind
    unwrap_t* unwrap
    cache_t* cache
    route_t* routes
    int nroutes
    unsigned long long packets
    bint any_payload_type       # no payload type set: every one is accepted
    uint64_t payload_types[2]   # bit n: payload type n is accepted (the answer's formats)
    bint relay                  # a pipe relays its publication: copy packets to the relay log
    relay_out_t** outputs       # relay taps run here (set_relay_outputs); NULL: none
    int noutputs

cdef struct relay_in_t:
    bint used
    addr_key_t key
    opener_t* opener            # the link's media lane's own opener (one replay window)
    uint64_t* flow_ids          # open addressing: flow id -> flow_src, 0 is an empty slot
    int* flow_src               # plaintext source (transport) handle of each flow
    Py_ssize_t flow_mask
    unsigned long long packets  # flow datagrams forwarded here, their payload bytes,
    unsigned long long bytes    # and datagrams that opened without a flow id
    unsigned long long malformed

cdef struct record_t:
    int stream
    int flags
    long long ext_seq
    long long timestamp
    double now
    int size
    int twcc
    int level
    int forwarded
    long long out_bytes

cdef struct info_t:
    bint is_keyframe
    bint is_start
    int temporal_id
    bint layer_sync
    bint has_vp8
    Py_ssize_t offset
    vp8_desc_t desc


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline long long _unwrap(unwrap_t* u, uint16_t value) noexcept nogil:
    cdef long long ext
    if not u.has_last:
        ext = <long long>value + 65536
    else:
        ext = u.last + <int16_t>(<uint16_t>(value - <uint16_t>(u.last & 0xFFFF)))
    u.has_last = True
    u.last = ext
    return ext


cdef inline void _on_sent(route_state_t* s, uint32_t ts, long long size, double now) noexcept nogil:
    s.packets_sent += 1
    s.octets_sent += size
    if not s.has_last_at or <int32_t>(ts - s.last_rtp_ts) >= 0:
        s.last_rtp_ts = ts
        s.last_at = now
        s.has_last_at = True


cdef inline void _record_history(route_state_t* s, long long out_seq, long long in_ext_seq,
                                 uint32_t ts, int layer, bint has_vp8, long long pid,
                                 int tl0, int key) noexcept nogil:
    cdef Py_ssize_t slot = out_seq & HISTORY_MASK
    s.h_out[slot] = <int32_t>(out_seq & 0xFFFF)
    s.h_in[slot] = in_ext_seq
    s.h_ts[slot] = ts
    s.h_layer[slot] = layer
    s.h_vp8[slot] = has_vp8
    s.h_pid[slot] = pid
    s.h_tl0[slot] = <int16_t>tl0
    s.h_key[slot] = <int16_t>key


cdef class RouteState:
    """Compiled twin of ``sfu.core.route_state.RouteState`` (same contract)."""

    cdef route_state_t st

    def __cinit__(self):
        memset(&self.st, 0, sizeof(route_state_t))
        cdef Py_ssize_t i
        for i in range(HISTORY):
            self.st.h_out[i] = -1
            self.st.h_pid[i] = -1
            self.st.h_tl0[i] = -1
            self.st.h_key[i] = -1

    @property
    def blocked(self):
        return self.st.blocked

    @blocked.setter
    def blocked(self, value):
        self.st.blocked = bool(value)

    @property
    def forwarded(self):
        return self.st.forwarded

    @forwarded.setter
    def forwarded(self, long long value):
        self.st.forwarded = value

    @property
    def packets_sent(self):
        return self.st.packets_sent

    @property
    def octets_sent(self):
        return self.st.octets_sent

    @property
    def last_rtp_ts(self):
        return self.st.last_rtp_ts

    @property
    def last_at(self):
        return self.st.last_at if self.st.has_last_at else None

    def on_packet(self, rtp_timestamp, long long payload_bytes, double now):
        _on_sent(&self.st, <uint32_t>(rtp_timestamp & 0xFFFFFFFF), payload_bytes, now)

    def record(self, long long out_seq, long long in_ext_seq, long long timestamp, int layer,
               bint has_vp8, long long picture_id, int tl0picidx, int keyidx):
        _record_history(&self.st, out_seq, in_ext_seq, <uint32_t>timestamp, layer, has_vp8,
                        picture_id, tl0picidx, keyidx)

    def lookup(self, long long seq):
        cdef Py_ssize_t slot = seq & HISTORY_MASK
        if self.st.h_out[slot] != seq:
            return None
        return HistoryEntry(
            self.st.h_in[slot],
            self.st.h_ts[slot],
            self.st.h_layer[slot],
            bool(self.st.h_vp8[slot]),
            self.st.h_pid[slot],
            self.st.h_tl0[slot],
            self.st.h_key[slot],
        )


cdef class SequenceUnwrapper:
    """Compiled twin of ``sfu.packet.seqnum.SequenceUnwrapper`` (16-bit RTP sequence numbers)."""

    cdef unwrap_t u

    @property
    def last(self):
        return self.u.last if self.u.has_last else None

    def peek(self, value):
        cdef uint16_t v = <uint16_t>(value & 0xFFFF)
        if not self.u.has_last:
            return <long long>v + 65536
        return self.u.last + <int16_t>(<uint16_t>(v - <uint16_t>(self.u.last & 0xFFFF)))

    def unwrap(self, value):
        return _unwrap(&self.u, <uint16_t>(value & 0xFFFF))


cdef object _address(sockaddr_storage* sa):
    """The Python socket module's address tuple for ``sa``."""
    cdef char text[64]
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    if sa.ss_family == AF_INET:
        v4 = <sockaddr_in*>sa
        inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(v4.sin_port))
    v6 = <sockaddr_in6*>sa
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text))
    host = text.decode("ascii")
    if v6.sin6_scope_id:
        # As recvfrom names it (getnameinfo): a scoped (link-local) address carries its
        # interface, which the links and the lanes compare with the address they dialled.
        try:
            host = f"{host}%{socket.if_indextoname(v6.sin6_scope_id)}"
        except OSError:
            host = f"{host}%{v6.sin6_scope_id}"
    return (host, ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)


cdef bint _key_of(sockaddr_storage* sa, addr_key_t* key) noexcept nogil:
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    memset(key, 0, sizeof(addr_key_t))
    if sa.ss_family == AF_INET:
        v4 = <sockaddr_in*>sa
        key.family = AF_INET
        key.port = ntohs(v4.sin_port)
        memcpy(key.ip, &v4.sin_addr, 4)
        return True
    if sa.ss_family == AF_INET6:
        v6 = <sockaddr_in6*>sa
        key.family = AF_INET6
        key.port = ntohs(v6.sin6_port)
        memcpy(key.ip, &v6.sin6_addr, 16)
        return True
    return False


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    """A flow id's slot in a relay input's table (splitmix64's finalizer)."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline uint32_t _hash(const addr_key_t* k) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i
    for i in range(16):
        h = (h ^ k.ip[i]) * 16777619u
    h = (h ^ k.port) * 16777619u
    return (h ^ <uint32_t>k.family) * 16777619u


cdef inline bint _same(const addr_key_t* a, const addr_key_t* b) noexcept nogil:
    return a.family == b.family and a.port == b.port and memcmp_16(a.ip, b.ip)


cdef inline bint memcmp_16(const uint8_t* a, const uint8_t* b) noexcept nogil:
    cdef int i
    for i in range(16):
        if a[i] != b[i]:
            return False
    return True


cdef class Forwarder:
    """Forwards registered SRTP media streams in C; hands everything else back."""

    cdef tx_t* tx
    cdef stream_t* streams
    cdef int* table                 # open addressing: address -> transport handle, -1 empty
    cdef Py_ssize_t table_mask
    cdef readonly Py_ssize_t max_transports
    cdef readonly Py_ssize_t max_streams
    cdef list tx_refs
    cdef list tx_addr               # per transport: the address object it was registered with
    cdef list framed_out            # egress to framed transports, until drain_framed()
    cdef list tx_pacers             # per transport: (pacer, history) kept alive, or None
    cdef int* paced_list            # transports whose pacer holds packets (the backlog)
    cdef int paced_count
    cdef readonly double paced_due  # when a backlogged pacer next lets go (inf: no backlog)
    cdef list stream_refs
    cdef list route_refs
    cdef list output_refs           # per stream: its RelayOutput objects, kept alive
    # ingress log
    cdef record_t* log
    cdef Py_ssize_t log_capacity
    cdef Py_ssize_t log_count
    # relay log: packets of relayed streams, for the pipes' taps (drain_relay)
    cdef uint8_t* relay_buf
    cdef int relay_stream[RELAY_SLOTS]
    cdef int relay_len[RELAY_SLOTS]
    cdef Py_ssize_t relay_count
    cdef readonly unsigned long long relay_overflow
    cdef uint32_t relay_done[RELAY_SLOTS]   # per entry: the outputs that took the packet
    # relay datagrams the outputs sealed, sent at the flush (each to its output's socket)
    cdef uint8_t* rsend_buf
    cdef mmsghdr rsend_msgs[RELAY_SEND_SLOTS]
    cdef iovec rsend_iov[RELAY_SEND_SLOTS]
    cdef relay_out_t* rsend_out[RELAY_SEND_SLOTS]
    cdef int rsend_stream[RELAY_SEND_SLOTS]
    cdef int rsend_index[RELAY_SEND_SLOTS]
    cdef int rsend_len[RELAY_SEND_SLOTS]
    cdef int rsend_count
    cdef list relay_collected       # (output, datagram) of outputs without a socket
    cdef readonly unsigned long long relay_sent
    cdef readonly unsigned long long relay_send_errors
    # latency samples
    cdef double latency[LATENCY_SLOTS]
    cdef Py_ssize_t latency_count
    cdef bint sampling
    cdef unsigned long long sample_mask
    # I/O buffers
    cdef uint8_t* recv_buf
    cdef mmsghdr recv_msgs[BATCH]
    cdef iovec recv_iov[BATCH]
    cdef sockaddr_storage recv_addr[BATCH]
    cdef uint8_t slow_flag[BATCH]
    cdef uint8_t work[WORK_SIZE]
    cdef uint8_t* out_buf
    cdef mmsghdr out_msgs[OUT_SLOTS]
    cdef iovec out_iov[OUT_SLOTS]
    cdef int out_tx[OUT_SLOTS]      # destination transport of each pending packet
    cdef int out_len[OUT_SLOTS]     # its length on the wire
    cdef int out_group[OUT_SLOTS]   # flush: the send (GSO group) it joins
    cdef int grp_tx[OUT_SLOTS]
    cdef int grp_seg[OUT_SLOTS]
    cdef int grp_n[OUT_SLOTS]
    cdef int grp_start[OUT_SLOTS]
    cdef int grp_bytes[OUT_SLOTS]
    cdef bint grp_closed[OUT_SLOTS]
    cdef uint8_t grp_cmsg[OUT_SLOTS][CMSG_SIZE]
    cdef int* open_group            # per transport: the group still accepting packets, -1
    cdef int out_count
    cdef readonly bint gso          # UDP GSO in use (off for good after the kernel refuses it)
    cdef readonly unsigned long long gso_sends
    cdef int fd                     # >= 0: flush with sendmmsg; -1: collect for process()
    cdef list collected
    # counters
    cdef readonly unsigned long long fast_packets
    cdef readonly unsigned long long fast_bytes
    cdef readonly unsigned long long slow_packets
    cdef readonly unsigned long long ingested_packets   # plaintext, through ingest()
    cdef readonly unsigned long long ingested_bytes
    cdef readonly unsigned long long sent_packets
    cdef readonly unsigned long long sent_bytes
    cdef readonly unsigned long long protect_errors
    cdef readonly unsigned long long send_errors
    cdef readonly unsigned long long log_overflow
    cdef readonly unsigned long long impaired_drops
    cdef readonly unsigned long long paced_packets

    cdef relay_in_t inputs[RELAY_INPUTS]
    cdef list input_refs            # per relay input: its opener, kept alive
    cdef list relay_in              # (input, flow, payload) kept for drain_relay_in()
    cdef Py_ssize_t relay_in_count
    cdef uint8_t link_kind[BATCH]   # pump_link, per slot: 0 forwarded/dropped, LINK_*
    cdef int link_input[BATCH]
    cdef uint64_t link_flow[BATCH]
    cdef int link_off[BATCH]
    cdef int link_len[BATCH]
    cdef readonly unsigned long long relay_in_packets
    cdef readonly unsigned long long relay_in_bytes
    cdef readonly unsigned long long relay_in_overflow

    def __cinit__(self, *, clock=None, int sample_mask=63, Py_ssize_t log_capacity=65536,
                  Py_ssize_t max_transports=4096, Py_ssize_t max_streams=16384):
        cdef Py_ssize_t size = 1
        cdef Py_ssize_t i
        if log_capacity <= 0 or max_transports <= 0 or max_streams <= 0:
            raise ValueError("capacities must be positive")
        if sample_mask < 0 or sample_mask & (sample_mask + 1):
            raise ValueError("sample_mask must be one less than a power of two")
        self.max_transports = max_transports
        self.max_streams = max_streams
        self.sampling = clock is not None
        self.sample_mask = sample_mask
        self.log_capacity = log_capacity
        while size < 2 * max_transports:
            size <<= 1
        self.table_mask = size - 1
        self.tx = <tx_t*>calloc(max_transports, sizeof(tx_t))
        self.streams = <stream_t*>calloc(max_streams, sizeof(stream_t))
        self.table = <int*>malloc(size * sizeof(int))
        self.log = <record_t*>malloc(log_capacity * sizeof(record_t))
        self.recv_buf = <uint8_t*>malloc(BATCH * RECV_SIZE)
        self.out_buf = <uint8_t*>malloc(OUT_SLOTS * OUT_SIZE)
        self.open_group = <int*>malloc(max_transports * sizeof(int))
        if self.open_group == NULL:
            raise MemoryError()
        for i in range(max_transports):
            self.open_group[i] = -1
        self.gso = True
        if (self.tx == NULL or self.streams == NULL or self.table == NULL or self.log == NULL
                or self.recv_buf == NULL or self.out_buf == NULL):
            raise MemoryError()
        for i in range(size):
            self.table[i] = -1
        self.tx_refs = [None] * max_transports
        self.tx_addr = [None] * max_transports
        self.tx_pacers = [None] * max_transports
        self.paced_list = <int*>calloc(max_transports, sizeof(int))
        if self.paced_list == NULL:
            raise MemoryError()
        self.paced_count = 0
        self.paced_due = INFINITY
        self.framed_out = []
        self.stream_refs = [None] * max_streams
        self.route_refs = [None] * max_streams
        self.output_refs = [None] * max_streams
        self.relay_collected = []
        self.fd = -1
        self.collected = []
        self.input_refs = [None] * RELAY_INPUTS
        self.relay_in = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.streams != NULL:
            for i in range(self.max_streams):
                free(self.streams[i].routes)
                free(self.streams[i].outputs)
        free(self.tx)
        free(self.paced_list)
        free(self.streams)
        free(self.table)
        free(self.log)
        free(self.recv_buf)
        free(self.out_buf)
        free(self.open_group)
        free(self.relay_buf)
        free(self.rsend_buf)
        for i in range(RELAY_INPUTS):
            free(self.inputs[i].flow_ids)
            free(self.inputs[i].flow_src)

    # -- control plane ------------------------------------------------------------------------

    cdef void _rebuild_table(self):
        cdef Py_ssize_t i, slot
        for i in range(self.table_mask + 1):
            self.table[i] = -1
        for i in range(self.max_transports):
            if not self.tx[i].used or self.tx[i].source:
                continue  # a source has no address: its packets come through ingest()
            slot = _hash(&self.tx[i].key) & self.table_mask
            while self.table[slot] >= 0:
                slot = (slot + 1) & self.table_mask
            self.table[slot] = <int>i

    cdef inline int _lookup(self, const addr_key_t* key) noexcept nogil:
        cdef Py_ssize_t slot = _hash(key) & self.table_mask
        cdef int h
        while True:
            h = self.table[slot]
            if h < 0:
                return -1
            if _same(&self.tx[h].key, key):
                return h
            slot = (slot + 1) & self.table_mask

    def set_transport(self, int handle, address, srtp, int twcc_id=0, int level_id=0,
                      bint framed=False):
        """Register (or update) a connected transport: remote address and SRTP session.
        ``framed``: an ICE-TCP peer (address ``(host, port, "tcp")``): its egress is handed
        back by :meth:`drain_framed` instead of being sent on the UDP socket."""
        cdef tx_t* t
        cdef sockaddr_in* v4
        cdef sockaddr_in6* v6
        cdef sockaddr_storage sa
        cdef socklen_t salen
        cdef addr_key_t key
        cdef bytes host
        cdef int i
        if not 0 <= handle < self.max_transports:
            raise ValueError(f"transport handle {handle} out of range")
        inbound = srtp.inbound
        outbound = srtp.outbound
        if not isinstance(inbound, SrtpContext) or not isinstance(outbound, SrtpContext):
            raise TypeError("srtp must hold compiled SrtpContext objects")
        host = str(address[0]).encode("ascii")
        memset(&sa, 0, sizeof(sa))
        v4 = <sockaddr_in*>&sa
        v6 = <sockaddr_in6*>&sa
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1:
            v4.sin_family = AF_INET
            v4.sin_port = htons(<uint16_t>int(address[1]))
            salen = sizeof(sockaddr_in)
        elif inet_pton(AF_INET6, host, &v6.sin6_addr) == 1:
            v6.sin6_family = AF_INET6
            v6.sin6_port = htons(<uint16_t>int(address[1]))
            salen = sizeof(sockaddr_in6)
        else:
            raise ValueError("address must be an IP literal")
        _key_of(&sa, &key)
        if framed:
            key.family |= FRAMED_KEY
        t = &self.tx[handle]
        if not t.used:
            t.nstreams = 0
            t.drop_every = 0
            t.drop_seen = 0
            t.pacer = NULL
            t.paced_history = NULL
            # paced_pending stays: a listed slot stays listed once (the release drops it).
        t.used = True
        t.key = key
        t.sa = sa
        t.salen = salen
        t.inbound = (<SrtpContext>inbound).session
        t.outbound = (<SrtpContext>outbound).session
        t.twcc_id = twcc_id
        t.level_id = level_id
        t.framed = framed
        t.source = False
        self.tx_refs[handle] = (inbound, outbound)
        self.tx_addr[handle] = address
        self._rebuild_table()

    def set_impairment(self, int handle, int drop_every):
        """Drop every ``drop_every``-th packet forwarded to a transport, counted as sent
        (0: none): deterministic loss for tests and drills, never on by default."""
        if drop_every < 0:
            raise ValueError("drop_every must not be negative")
        if not 0 <= handle < self.max_transports or not self.tx[handle].used:
            raise KeyError(f"transport {handle} is not registered")
        self.tx[handle].drop_every = drop_every
        self.tx[handle].drop_seen = 0

    def set_source(self, int handle, int level_id=0):
        """Register (or update) a plaintext source: a transport slot whose streams' packets
        arrive already decrypted, through :meth:`ingest` (a relay pipe's far end), never from
        the socket; ``level_id`` is the audio-level extension id its packets carry. It is
        never a destination: no route sends to it."""
        cdef tx_t* t
        cdef bint listed
        if not 0 <= handle < self.max_transports:
            raise ValueError(f"transport handle {handle} out of range")
        t = &self.tx[handle]
        if not t.used or not t.source:
            if t.used:
                raise ValueError(f"transport {handle} is registered as a transport")
            listed = t.paced_pending
            memset(t, 0, sizeof(tx_t))
            t.paced_pending = listed  # a listed slot stays listed once (the release drops it)
        t.used = True
        t.source = True
        t.twcc_id = 0
        t.level_id = level_id
        # Never a destination: no pacer, no impairment (the reference's fresh slot has none).
        t.pacer = NULL
        t.paced_history = NULL
        t.drop_every = 0
        t.drop_seen = 0
        self.tx_refs[handle] = None
        self.tx_addr[handle] = None
        self.tx_pacers[handle] = None

    def remove_transport(self, int handle):
        """Forget a transport (its streams stay registered until removed, and stay idle)."""
        if not 0 <= handle < self.max_transports or not self.tx[handle].used:
            return
        self.tx[handle].used = False
        self.tx[handle].inbound = NULL
        self.tx[handle].outbound = NULL
        self.tx_refs[handle] = None
        self.tx_addr[handle] = None
        self.tx[handle].pacer = NULL
        self.tx[handle].paced_history = NULL
        self.tx_pacers[handle] = None
        self._rebuild_table()

    def set_pacer(self, int handle, pacer, history=None):
        """Queue a transport's egress in ``pacer`` (a compiled ``Pacer``; None: send at once)
        instead of sending it; ``history`` (its compiled send history) numbers the packets,
        and each one's number becomes its tag. What the pacer lets go leaves with each batch;
        the rest on the owner's timer (:meth:`release_backlog`, :meth:`send_paced`)."""
        cdef tx_t* t
        if not 0 <= handle < self.max_transports or not self.tx[handle].used:
            raise KeyError(f"transport {handle} is not registered")
        t = &self.tx[handle]
        if t.source:
            raise ValueError(f"transport {handle} is a source: nothing is sent to it")
        if pacer is None:
            t.pacer = NULL
            t.paced_history = NULL
            self.tx_pacers[handle] = None
            return
        t.pacer = &(<Pacer?>pacer).p
        t.paced_history = NULL if history is None else &(<SendHistory?>history).h
        self.tx_pacers[handle] = (pacer, history)

    def paced_backlog(self):
        """The handles of the transports whose pacer holds packets after the last release
        (what :meth:`release_backlog` serves; :attr:`paced_due` says when)."""
        cdef int i
        return sorted([self.paced_list[i] for i in range(self.paced_count)])

    def release_backlog(self, double now, sock=None):
        """Release what the backlogged pacers let go at ``now``: sent on ``sock`` (one
        ``sendmmsg``) and counted as sent; returns the egress datagrams when there is no
        socket (empty otherwise). Framed transports' packets wait in :meth:`drain_framed`."""
        self.fd = -1 if sock is None else sock.fileno()
        self.collected = []
        if self.paced_count:
            with nogil:
                self._release_due(now)
        self._flush()
        self.fd = -1
        egress = self.collected
        self.collected = []
        return egress

    def send_paced(self, int handle, double now, sock=None):
        """Release what transport ``handle``'s pacer lets go at ``now``: sent on ``sock``
        (one ``sendmmsg``, GSO groups) and counted as sent; without a socket, or to a framed
        (ICE-TCP) transport, returned instead (SRTP packets, oldest first) for the caller to
        send. An unknown or unpaced transport releases nothing."""
        cdef tx_t* t
        if not 0 <= handle < self.max_transports or not self.tx[handle].used:
            return []
        t = &self.tx[handle]
        if t.pacer == NULL:
            return []
        cdef int left
        if sock is None or t.framed:
            pacer, history = self.tx_pacers[handle]
            out = [packet for packet, _ in pacer.pop(now, history)]
            left = t.pacer.packets
        else:
            self.fd = sock.fileno()
            with nogil:
                left = self._release_one(handle, now)
                self._flush_nogil()
            self.fd = -1
            out = []
        if left:
            self._backlog(handle, pacer_next_deadline(t.pacer, now))
        return out

    cdef void _backlog(self, int handle, double due) noexcept nogil:
        """Keep ``handle`` in the backlog, its pacer next letting go at ``due``."""
        if not self.tx[handle].paced_pending:
            self.tx[handle].paced_pending = True
            self.paced_list[self.paced_count] = handle
            self.paced_count += 1
        if due < self.paced_due:
            self.paced_due = due

    def set_stream(self, int handle, int transport, source, int kind):
        """Register an ingress stream (``source``: ssrc, layer, unwrapper, cache)."""
        cdef stream_t* s
        cdef tx_t* t
        cdef uint64_t masks[2]
        cdef int pt
        masks[0] = 0
        masks[1] = 0
        if not 0 <= handle < self.max_streams:
            raise ValueError(f"stream handle {handle} out of range")
        if kind != K_AUDIO and kind != K_VP8:
            raise ValueError(f"unknown stream kind {kind}")
        unwrapper = source.unwrapper
        cache = source.cache
        if not isinstance(unwrapper, SequenceUnwrapper) or not isinstance(
            cache, RetransmissionBuffer
        ):
            raise TypeError(
                "the source stream's unwrapper and cache must come from the compiled kernels "
                "(sfu.core.kernels.compiled()), as the forwarder's do"
            )
        types = tuple(getattr(source, "payload_types", ()))
        for pt in types:
            if not 0 <= pt <= 127:
                raise ValueError(f"payload type {pt} out of range")
            masks[pt >> 6] |= (<uint64_t>1) << (pt & 63)
        self.remove_stream(handle)
        if not 0 <= transport < self.max_transports or not self.tx[transport].used:
            raise KeyError(f"transport {transport} is not registered")
        t = &self.tx[transport]
        if t.nstreams >= TX_STREAMS:
            raise ValueError("too many streams on one transport")
        s = &self.streams[handle]
        s.used = True
        s.transport = transport
        s.ssrc = <uint32_t>source.ssrc
        s.layer = source.layer
        s.any_payload_type = not types
        s.payload_types[0] = masks[0]
        s.payload_types[1] = masks[1]
        s.kind = kind
        s.unwrap = &(<SequenceUnwrapper>unwrapper).u
        s.cache = &(<RetransmissionBuffer>cache).c
        s.routes = NULL
        s.nroutes = 0
        s.packets = 0
        s.relay = False
        s.outputs = NULL
        s.noutputs = 0
        t.ssrcs[t.nstreams] = s.ssrc
        t.streams[t.nstreams] = handle
        t.nstreams += 1
        self.stream_refs[handle] = (source, unwrapper, cache)

    def remove_stream(self, int handle):
        """Forget an ingress stream (its packets go to the slow path from now on)."""
        cdef stream_t* s
        cdef tx_t* t
        cdef int i, j
        if not 0 <= handle < self.max_streams or not self.streams[handle].used:
            return
        if self.rsend_count:
            self._relay_flush()  # a batch cut short: its slots point at the outputs
        s = &self.streams[handle]
        t = &self.tx[s.transport]
        for i in range(t.nstreams):
            if t.streams[i] == handle:
                for j in range(i, t.nstreams - 1):
                    t.streams[j] = t.streams[j + 1]
                    t.ssrcs[j] = t.ssrcs[j + 1]
                t.nstreams -= 1
                break
        free(s.routes)
        s.routes = NULL
        s.nroutes = 0
        free(s.outputs)
        s.outputs = NULL
        s.noutputs = 0
        s.used = False
        self.stream_refs[handle] = None
        self.route_refs[handle] = None
        self.output_refs[handle] = None

    def set_relay(self, int handle, bint relay):
        """Copy the forwardable packets of stream ``handle`` to the relay log (a pipe relays
        its publication; :meth:`drain_relay` hands them to the taps) or stop."""
        if not 0 <= handle < self.max_streams or not self.streams[handle].used:
            raise KeyError(f"stream {handle} is not registered")
        if relay:
            self._relay_log_ready()
        self.streams[handle].relay = relay

    cdef _relay_log_ready(self):
        if self.relay_buf == NULL:
            self.relay_buf = <uint8_t*>malloc(RELAY_SLOTS * WORK_SIZE)
            if self.relay_buf == NULL:
                raise MemoryError()

    def set_relay_outputs(self, int handle, outputs):
        """Relay the packets of stream ``handle`` through ``outputs`` (``RelayOutput``s of
        the compiled kernels, at most 32) here, sealed and sent with the batch; a packet an
        output cannot take goes to the relay log for the Python taps (see drain_relay)."""
        cdef relay_out_t** array
        cdef Py_ssize_t i, n
        cdef stream_t* s
        if not 0 <= handle < self.max_streams or not self.streams[handle].used:
            raise KeyError(f"stream {handle} is not registered")
        if self.rsend_count:
            self._relay_flush()  # a batch cut short: its slots point at the outputs
        entries = list(outputs)
        n = len(entries)
        if n > RELAY_OUTPUTS:
            raise ValueError(f"a stream has at most {RELAY_OUTPUTS} relay outputs")
        for output in entries:
            if not isinstance(output, RelayOutput):
                raise TypeError(
                    "relay outputs must come from the compiled kernels "
                    "(sfu.core.kernels.compiled()), as the forwarder does"
                )
        if n:
            self._relay_log_ready()
            if self.rsend_buf == NULL:
                self.rsend_buf = <uint8_t*>malloc(RELAY_SEND_SLOTS * RELAY_SEND_SIZE)
                if self.rsend_buf == NULL:
                    raise MemoryError()
        array = <relay_out_t**>calloc(n if n else 1, sizeof(relay_out_t*))
        if array == NULL:
            raise MemoryError()
        for i in range(n):
            array[i] = &(<RelayOutput>entries[i]).o
        s = &self.streams[handle]
        free(s.outputs)
        s.outputs = array if n else NULL
        if not n:
            free(array)
        s.noutputs = <int>n
        self.output_refs[handle] = entries if n else None

    def drain_relay(self):
        """Take the relayed streams' packets logged since the last call: (stream handle,
        the packet as received, decrypted, the outputs that took it: bit k for output k),
        oldest first."""
        cdef Py_ssize_t i
        out = [
            (self.relay_stream[i],
             (<char*>(self.relay_buf + i * WORK_SIZE))[:self.relay_len[i]],
             self.relay_done[i])
            for i in range(self.relay_count)
        ]
        self.relay_count = 0
        return out

    def drain_relay_sent(self):
        """Take the relay datagrams sealed for outputs without a socket since the last call:
        (output, datagram), oldest first (tests and tools; a node link's outputs send)."""
        out = self.relay_collected
        self.relay_collected = []
        return out

    def set_routes(self, int handle, routes):
        """Replace the fan-out snapshot of stream ``handle``: (subscription, transport)."""
        cdef stream_t* s
        cdef route_t* array
        cdef route_t* r
        cdef Py_ssize_t i, n
        if not 0 <= handle < self.max_streams or not self.streams[handle].used:
            raise KeyError(f"stream {handle} is not registered")
        entries = list(routes)
        n = len(entries)
        array = <route_t*>calloc(n if n else 1, sizeof(route_t))
        if array == NULL:
            raise MemoryError()
        refs = []
        try:
            for i in range(n):
                sub, out = entries[i]
                r = &array[i]
                r.out = out if 0 <= out < self.max_transports else -1
                selector = sub.selector
                vp8 = sub.vp8
                history = sub.send_history
                # The casts below read C state: refuse another kind's objects by name first.
                if not (
                    isinstance(sub.munger, RtpMunger)
                    and isinstance(sub.extensions, ExtensionRewriter)
                    and isinstance(sub.state, RouteState)
                    and (selector is None or isinstance(selector, SimulcastSelector))
                    and (vp8 is None or isinstance(vp8, Vp8Munger))
                    and (history is None or isinstance(history, SendHistory))
                ):
                    raise TypeError(
                        "a route's subscription must come from the compiled kernels "
                        "(sfu.core.kernels.compiled()), as the forwarder's do"
                    )
                r.selector = NULL if selector is None else &(<SimulcastSelector?>selector).s
                r.munger = &(<RtpMunger?>sub.munger).m
                r.vp8 = NULL if vp8 is None else &(<Vp8Munger?>vp8).m
                r.ext = &(<ExtensionRewriter?>sub.extensions).r
                r.state = &(<RouteState?>sub.state).st
                r.history = NULL if history is None else &(<SendHistory?>history).h
                # The route points into these objects: keep each alive, even if the
                # subscription swaps one before the next push.
                refs.append(
                    (sub, selector, sub.munger, vp8, sub.extensions, sub.state, history)
                )
        except BaseException:
            free(array)
            raise
        s = &self.streams[handle]
        free(s.routes)
        s.routes = array
        s.nroutes = <int>n
        self.route_refs[handle] = refs

    # -- relay inputs (the receiving side of relays between nodes) -----------------------------

    def set_relay_input(self, int index, address, opener):
        """Open the lane datagrams that come from ``address`` (a peer node's link address)
        with ``opener`` (the link's media lane's own compiled ``LaneOpener``: one replay
        window and one count for the lane and the forwarder) as relay input ``index``
        (0..MAX_RELAY_INPUTS-1); its flow table starts empty."""
        cdef sockaddr_storage sa
        cdef addr_key_t key
        cdef relay_in_t* r
        cdef int i
        if not 0 <= index < RELAY_INPUTS:
            raise ValueError(f"relay input {index} out of range")
        if not isinstance(opener, LaneOpener):
            raise TypeError(
                "the opener must come from the compiled kernels (sfu.core.kernels.compiled()), "
                "as the forwarder does"
            )
        self._sockaddr((str(address[0]).split("%", 1)[0], address[1]), &sa)
        if not _key_of(&sa, &key):
            raise ValueError("address must be an IP literal")
        for i in range(RELAY_INPUTS):
            if i != index and self.inputs[i].used and _same(&self.inputs[i].key, &key):
                raise ValueError("another relay input has that address")
        self.remove_relay_input(index)
        r = &self.inputs[index]
        r.key = key
        r.opener = &(<LaneOpener>opener).o
        r.packets = 0
        r.bytes = 0
        r.malformed = 0
        r.used = True
        self.input_refs[index] = opener

    def remove_relay_input(self, int index):
        """Forget relay input ``index``: its datagrams take the slow path from now on."""
        cdef relay_in_t* r
        if not 0 <= index < RELAY_INPUTS:
            return
        r = &self.inputs[index]
        free(r.flow_ids)
        free(r.flow_src)
        r.flow_ids = NULL
        r.flow_src = NULL
        r.flow_mask = 0
        r.opener = NULL
        r.used = False
        self.input_refs[index] = None

    def set_relay_flows(self, int index, flows):
        """Replace relay input ``index``'s flow table: flow id -> plaintext source handle
        (:meth:`set_source`) whose streams' RTP on that flow is forwarded here."""
        cdef relay_in_t* r
        cdef Py_ssize_t size = 8, slot, n
        cdef uint64_t* ids
        cdef int* src
        cdef uint64_t flow_id
        if not 0 <= index < RELAY_INPUTS or not self.inputs[index].used:
            raise KeyError(f"relay input {index} is not registered")
        entries = list(flows.items())
        n = len(entries)
        if n > INPUT_FLOWS:
            raise ValueError(f"a relay input routes at most {INPUT_FLOWS} flows")
        for flow, source in entries:
            if not 0 < flow < (1 << 62) or not 0 <= source < self.max_transports:
                raise ValueError(f"flow {flow} -> {source} out of range")
        while size < 2 * n:
            size <<= 1
        ids = <uint64_t*>calloc(size, sizeof(uint64_t))
        src = <int*>calloc(size, sizeof(int))
        if ids == NULL or src == NULL:
            free(ids)
            free(src)
            raise MemoryError()
        for flow, source in entries:
            flow_id = <uint64_t>flow
            slot = <Py_ssize_t>(_mix64(flow_id) & <uint64_t>(size - 1))
            while ids[slot] != 0 and ids[slot] != flow_id:
                slot = (slot + 1) & (size - 1)
            ids[slot] = flow_id
            src[slot] = <int>source
        r = &self.inputs[index]
        free(r.flow_ids)
        free(r.flow_src)
        r.flow_ids = ids
        r.flow_src = src
        r.flow_mask = size - 1

    def relay_input_counts(self, int index):
        """(flow datagrams forwarded, their payload bytes, opened without a flow id) of
        relay input ``index`` so far; zeros when it is not registered."""
        cdef relay_in_t* r
        if not 0 <= index < RELAY_INPUTS or not self.inputs[index].used:
            return (0, 0, 0)
        r = &self.inputs[index]
        return (r.packets, r.bytes, r.malformed)

    def drain_relay_in(self):
        """Take the lane datagrams opened but not forwarded since the last call: (relay
        input, flow id, payload), oldest first, for Python's path of that link."""
        out = self.relay_in
        self.relay_in = []
        self.relay_in_count = 0
        return out

    def receive_link(self, datagrams, double now):
        """Take what is ours of datagrams read from the node link socket (relay inputs'
        lane datagrams); returns (the rest, untouched, for the slow path; egress)."""
        cdef bytes data
        cdef addr_key_t key
        cdef sockaddr_storage sa
        cdef Py_ssize_t n
        slow = []
        self.fd = -1
        self.collected = []
        for data, address in datagrams:
            n = len(data)
            self.link_kind[0] = LINK_SLOW
            if 0 < n < RECV_SIZE and not (<const uint8_t*><const char*>data)[0] & FIXED_BIT:
                self._sockaddr(address, &sa)
                if _key_of(&sa, &key):
                    memcpy(self.recv_buf, <const char*>data, n)
                    with nogil:
                        self._lane_in(0, self.recv_buf, n, &key, now)
            self._link_after(0, data, address, slow)
        self._finish_paced(now)
        self._flush()
        egress = self.collected
        self.collected = []
        return slow, egress

    def pump_link(self, sock, double now, out=None):
        """Read what the (non-blocking) node link socket holds, as :meth:`receive_link`;
        the egress is sent on ``out`` (the media socket) when given, else returned."""
        cdef int fd = sock.fileno()
        cdef int got, i, rounds
        cdef addr_key_t key
        slow = []
        self.fd = -1 if out is None else out.fileno()
        self.collected = []
        for rounds in range(ROUNDS):
            with nogil:
                got = self._recv_batch(fd)
                if got > 0:
                    for i in range(got):
                        self.link_kind[i] = LINK_SLOW
                        if self.recv_msgs[i].msg_len >= RECV_SIZE:
                            continue  # truncated: the slow path counts it
                        if (self.recv_msgs[i].msg_len == 0
                                or self.recv_buf[i * RECV_SIZE] & FIXED_BIT):
                            continue  # QUIC (or empty: what the link's path makes of it)
                        if not _key_of(&self.recv_addr[i], &key):
                            continue
                        self._lane_in(i, self.recv_buf + i * RECV_SIZE,
                                      self.recv_msgs[i].msg_len, &key, now)
                    if self.paced_count:
                        self._release_due(now)  # after each round, as the reference
                    if self.fd >= 0:
                        self._flush_nogil()
            if got <= 0:
                break
            for i in range(got):
                if self.link_kind[i]:
                    self._link_after(
                        i,
                        PyBytes_FromStringAndSize(
                            <const char*>(self.recv_buf + i * RECV_SIZE),
                            self.recv_msgs[i].msg_len,
                        ) if self.link_kind[i] == LINK_SLOW else None,
                        _address(&self.recv_addr[i]) if self.link_kind[i] == LINK_SLOW else None,
                        slow,
                    )
            if got < BATCH:
                break
        self._flush()
        self.fd = -1
        egress = self.collected
        self.collected = []
        return slow, egress

    cdef _link_after(self, int i, data, address, list slow):
        """Slot ``i`` of a link batch after the kernel saw it: to the slow path, or its
        opened plaintext kept for drain_relay_in()."""
        cdef int kind = self.link_kind[i]
        if kind == LINK_SLOW:
            slow.append((data, address))
        elif kind == LINK_KEPT:
            if self.relay_in_count < RELAY_IN_SLOTS:
                self.relay_in.append((
                    self.link_input[i],
                    self.link_flow[i],
                    PyBytes_FromStringAndSize(
                        <const char*>(self.recv_buf + i * RECV_SIZE + self.link_off[i]),
                        self.link_len[i],
                    ),
                ))
                self.relay_in_count += 1
            else:
                self.relay_in_overflow += 1

    cdef void _lane_in(self, int i, uint8_t* data, Py_ssize_t n, const addr_key_t* key,
                       double now) noexcept nogil:
        """Slot ``i`` of a link batch, a lane datagram: open it if it is a relay input's,
        forward it if it is RTP of a routed flow's source stream; ``link_kind[i]`` says
        what Python does with it after (nothing: forwarded or dropped and counted)."""
        cdef int index = -1, k, source, si
        cdef relay_in_t* r = NULL
        cdef Py_ssize_t m, length, slot
        cdef uint64_t flow
        cdef uint8_t* p
        cdef tx_t* t
        cdef uint32_t ssrc
        for k in range(RELAY_INPUTS):
            if self.inputs[k].used and _same(&self.inputs[k].key, key):
                index = k
                r = &self.inputs[k]
                break
        if r == NULL:
            return  # no relay input: the slow path (its link, or dropped there)
        self.link_kind[i] = 0
        m = lane_open(r.opener, data, n)
        if m < 0:
            return  # malformed, unknown key, replayed or forged: counted by the opener
        p = data + LANE_HEADER_BYTES
        if m == 0:
            r.malformed += 1
            return
        length = (<Py_ssize_t>1) << (p[0] >> 6)
        if length > m:
            r.malformed += 1
            return
        flow = p[0] & 0x3F
        for k in range(1, length):
            flow = (flow << 8) | p[k]
        p += length
        m -= length
        source = -1
        if r.flow_ids != NULL:
            slot = <Py_ssize_t>(_mix64(flow) & <uint64_t>r.flow_mask)
            while r.flow_ids[slot] != 0:
                if r.flow_ids[slot] == flow:
                    source = r.flow_src[slot]
                    break
                slot = (slot + 1) & r.flow_mask
        if (source >= 0 and source < self.max_transports and self.tx[source].used
                and self.tx[source].source and 12 <= m <= WORK_SIZE
                and 128 <= p[0] <= 191 and not (192 <= p[1] <= 223)):
            t = &self.tx[source]
            ssrc = _be32(p + 8)
            for k in range(t.nstreams):
                if t.ssrcs[k] == ssrc:
                    si = t.streams[k]
                    r.packets += 1
                    r.bytes += m
                    self.relay_in_packets += 1
                    self.relay_in_bytes += m
                    memcpy(self.work, p, m)
                    self._ingest(t, &self.streams[si], si, self.work, m, now)
                    return
        self.link_kind[i] = LINK_KEPT
        self.link_input[i] = index
        self.link_flow[i] = flow
        self.link_off[i] = <int>(p - (self.recv_buf + i * RECV_SIZE))
        self.link_len[i] = <int>m

    # -- packets ------------------------------------------------------------------------------

    def process(self, datagrams, double now):
        """Forward what is ours; returns (slow-path datagrams, egress datagrams)."""
        cdef bytes data
        cdef addr_key_t key
        cdef sockaddr_storage sa
        cdef Py_ssize_t n
        cdef int handled
        slow = []
        self.fd = -1
        self.collected = []
        for data, address in datagrams:
            n = len(data)
            self._sockaddr(address, &sa)
            _key_of(&sa, &key)
            if len(address) == 3 and address[2] == FRAMED_MARK:
                key.family |= FRAMED_KEY
            handled = 0
            if n <= RECV_SIZE:
                memcpy(self.recv_buf, <const char*>data, n)
                with nogil:
                    handled = self._handle(self.recv_buf, n, &key, now)
            if not handled:
                self.slow_packets += 1
                slow.append((data, address))
        self._finish_paced(now)
        self._flush()
        egress = self.collected
        self.collected = []
        return slow, egress

    def ingest(self, packets, double now, sock=None):
        """Forward plaintext RTP packets of sources' streams (:meth:`set_source`) as if they
        had arrived decrypted on a transport: ``packets`` are (source handle, packet). Returns
        (the entries that are not ours, for the slow path; egress datagrams). With ``sock``
        the egress is sent on it, in one flush for the batch, and the egress list is empty."""
        cdef bytes data
        cdef Py_ssize_t n
        cdef tx_t* t
        cdef int si, i, source
        cdef uint32_t ssrc
        cdef const uint8_t* p
        slow = []
        t = NULL
        self.fd = -1 if sock is None else sock.fileno()
        self.collected = []
        for entry in packets:
            source, data = entry
            n = len(data)
            p = <const uint8_t*><const char*>data
            si = -1
            if (0 <= source < self.max_transports and self.tx[source].used
                    and self.tx[source].source and 12 <= n <= WORK_SIZE
                    and 128 <= p[0] <= 191 and not (192 <= p[1] <= 223)):
                t = &self.tx[source]
                ssrc = _be32(p + 8)
                for i in range(t.nstreams):
                    if t.ssrcs[i] == ssrc:
                        si = t.streams[i]
                        break
            if si < 0:
                slow.append(entry)
                continue
            memcpy(self.work, p, n)
            self.ingested_packets += 1
            self.ingested_bytes += n
            with nogil:
                self._ingest(t, &self.streams[si], si, self.work, n, now)
        self._finish_paced(now)
        self._flush()
        self.fd = -1
        egress = self.collected
        self.collected = []
        return slow, egress

    cdef void _sockaddr(self, address, sockaddr_storage* sa) except *:
        cdef sockaddr_in* v4 = <sockaddr_in*>sa
        cdef sockaddr_in6* v6 = <sockaddr_in6*>sa
        cdef bytes host = str(address[0]).encode("ascii")
        memset(sa, 0, sizeof(sockaddr_storage))
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1:
            v4.sin_family = AF_INET
            v4.sin_port = htons(<uint16_t>int(address[1]))
        elif inet_pton(AF_INET6, host, &v6.sin6_addr) == 1:
            v6.sin6_family = AF_INET6
            v6.sin6_port = htons(<uint16_t>int(address[1]))

    def pump(self, sock, double now):
        """Read what the (non-blocking) socket holds, forward, send; returns the slow path."""
        cdef int fd = sock.fileno()
        cdef int got, i, rounds
        cdef addr_key_t key
        slow = []
        self.fd = fd
        for rounds in range(ROUNDS):
            with nogil:
                got = self._recv_batch(fd)
                if got > 0:
                    for i in range(got):
                        self.slow_flag[i] = 1
                        if self.recv_msgs[i].msg_len >= RECV_SIZE:
                            continue  # truncated: the slow path drops it as malformed
                        if not _key_of(&self.recv_addr[i], &key):
                            continue
                        if self._handle(self.recv_buf + i * RECV_SIZE,
                                        self.recv_msgs[i].msg_len, &key, now):
                            self.slow_flag[i] = 0
                    if self.paced_count:
                        self._release_due(now)
                    self._flush_nogil()
            if got <= 0:
                break
            for i in range(got):
                if self.slow_flag[i]:
                    self.slow_packets += 1
                    slow.append((
                        PyBytes_FromStringAndSize(
                            <const char*>(self.recv_buf + i * RECV_SIZE),
                            self.recv_msgs[i].msg_len,
                        ),
                        _address(&self.recv_addr[i]),
                    ))
            if got < BATCH:
                break
        self.fd = -1
        return slow

    def drain_framed(self):
        """Take the egress for framed (ICE-TCP) transports since the last call: a list of
        (SRTP packet, the address the transport was registered with), oldest first."""
        out = self.framed_out
        self.framed_out = []
        return out

    def drain_log(self):
        """Take the ingress records logged since the last call (oldest first)."""
        cdef Py_ssize_t i
        cdef record_t* r
        out = []
        for i in range(self.log_count):
            r = &self.log[i]
            out.append((r.stream, r.flags, r.ext_seq, r.timestamp, r.now, r.size, r.twcc,
                        r.level, r.forwarded, r.out_bytes))
        self.log_count = 0
        return out

    def drain_latency(self):
        """Take the sampled forwarding latencies (seconds) since the last call."""
        cdef Py_ssize_t i
        out = [self.latency[i] for i in range(self.latency_count)]
        self.latency_count = 0
        return out

    # -- the per-packet path (no GIL) ---------------------------------------------------------

    cdef void _relay(self, stream_t* st, int handle, const uint8_t* p,
                     Py_ssize_t n) noexcept nogil:
        cdef uint32_t done = 0
        cdef bint pending = False
        cdef relay_out_t* o
        cdef uint8_t* slot
        cdef uint8_t* base
        cdef Py_ssize_t total, length
        cdef int k
        for k in range(st.noutputs):
            o = st.outputs[k]
            if st.layer < 0 or st.layer > 63 or not (o.spatial_mask >> st.layer) & 1:
                o.filtered += 1  # the far side does not demand this layer
                done |= (<uint32_t>1) << k
                continue
            total = o.prefix_n + n
            if (total > o.max_datagram
                    or total + LANE_HEADER_BYTES + LANE_TAG_BYTES > RELAY_SEND_SIZE):
                o.failed += 1
                pending = True
                continue
            if self.rsend_count >= RELAY_SEND_SLOTS:
                self._relay_flush()
            slot = self.rsend_buf + self.rsend_count * RELAY_SEND_SIZE
            base = slot + LANE_HEADER_BYTES if o.lane != NULL else slot
            memcpy(base, o.prefix, o.prefix_n)
            memcpy(base + o.prefix_n, p, n)
            length = total
            if o.lane != NULL:
                length = lane_seal(o.lane, slot, total)
                if length < 0:  # the lane is not up (or its key is spent): the taps' path
                    o.failed += 1
                    pending = True
                    continue
            o.packets += 1
            o.bytes += n
            self.rsend_out[self.rsend_count] = o
            self.rsend_stream[self.rsend_count] = handle
            self.rsend_index[self.rsend_count] = k
            self.rsend_len[self.rsend_count] = <int>length
            self.rsend_count += 1
            done |= (<uint32_t>1) << k
        if not (st.relay or pending):
            return
        if self.relay_count < RELAY_SLOTS:
            memcpy(self.relay_buf + self.relay_count * WORK_SIZE, p, n)
            self.relay_stream[self.relay_count] = handle
            self.relay_len[self.relay_count] = <int>n
            self.relay_done[self.relay_count] = done
            self.relay_count += 1
        else:
            self.relay_overflow += 1

    cdef void _relay_flush(self) noexcept nogil:
        """Send the sealed relay datagrams, each run of one socket in one ``sendmmsg``;
        those of outputs without a socket are kept for drain_relay_sent()."""
        cdef int i = 0, j, fd, done, r
        cdef msghdr* hdr
        while i < self.rsend_count:
            fd = self.rsend_out[i].fd
            j = i
            while j < self.rsend_count and self.rsend_out[j].fd == fd:
                self.rsend_iov[j].iov_base = self.rsend_buf + j * RELAY_SEND_SIZE
                self.rsend_iov[j].iov_len = self.rsend_len[j]
                memset(&self.rsend_msgs[j], 0, sizeof(mmsghdr))
                hdr = &self.rsend_msgs[j].msg_hdr
                hdr.msg_name = self.rsend_out[j].sa
                hdr.msg_namelen = self.rsend_out[j].salen
                hdr.msg_iov = &self.rsend_iov[j]
                hdr.msg_iovlen = 1
                j += 1
            if fd < 0:
                with gil:
                    self._relay_collect(i, j)
                self.relay_sent += j - i
            else:
                done = i
                while done < j:
                    r = sendmmsg(fd, &self.rsend_msgs[done], j - done, MSG_DONTWAIT)
                    if r > 0:
                        done += r
                        self.relay_sent += r
                    elif r < 0 and errno == EINTR:
                        continue
                    elif r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK):
                        self.relay_send_errors += j - done  # socket buffer full: drop the rest
                        break
                    else:
                        self.relay_send_errors += 1  # this destination failed
                        done += 1
            i = j
        self.rsend_count = 0

    cdef void _relay_collect(self, int start, int end):
        cdef int i
        for i in range(start, end):
            refs = self.output_refs[self.rsend_stream[i]]
            self.relay_collected.append((
                refs[self.rsend_index[i]],
                PyBytes_FromStringAndSize(<const char*>(self.rsend_buf + i * RELAY_SEND_SIZE),
                                          self.rsend_len[i]),
            ))

    cdef int _release_one(self, int handle, double now) noexcept nogil:
        """Move what transport ``handle``'s pacer lets go at ``now`` into the egress slots
        (its send history restamped); returns how many packets it still holds."""
        cdef tx_t* t = &self.tx[handle]
        cdef pacer_t* pacer = t.pacer
        cdef int i, cls, size
        pacer_begin(pacer, now)
        while True:
            i = pacer_next(pacer, now, &cls)
            if i < 0:
                break
            size = pacer.slots[i].size
            if size > OUT_SIZE:  # only a Python push could be this large: never sent
                pacer_take(pacer, cls, i, now, t.paced_history)
                self.send_errors += 1
                continue
            if self.out_count >= OUT_SLOTS:
                self._flush_nogil()
            memcpy(self.out_buf + self.out_count * OUT_SIZE, pacer.slots[i].data, size)
            pacer_take(pacer, cls, i, now, t.paced_history)
            self.out_tx[self.out_count] = handle
            self.out_len[self.out_count] = size
            self.out_count += 1
            self.sent_packets += 1
            self.sent_bytes += size
        pacer_end(pacer, t.paced_history)
        return pacer.packets

    cdef void _release_due(self, double now) noexcept nogil:
        """What the listed pacers (those that got packets, and the backlog) let go at
        ``now`` joins the egress slots (no Python per packet); only the transports whose
        pacer still holds packets stay listed, and :attr:`paced_due` says when the first of
        them lets go of more."""
        cdef int k, handle, kept = 0
        cdef double due, first = INFINITY
        for k in range(self.paced_count):
            handle = self.paced_list[k]
            if self.tx[handle].pacer != NULL and self._release_one(handle, now):
                self.paced_list[kept] = handle
                kept += 1
                due = pacer_next_deadline(self.tx[handle].pacer, now)
                if due < first:
                    first = due
            else:
                self.tx[handle].paced_pending = False
        self.paced_count = kept
        self.paced_due = first

    cdef void _finish_paced(self, double now):
        """:meth:`_release_due` from Python code, before its batch's last flush."""
        if self.paced_count:
            with nogil:
                self._release_due(now)

    cdef void _flush(self):
        cdef int i
        if self.rsend_count:
            self._relay_flush()
        if self.fd >= 0:
            with nogil:
                self._flush_nogil()
            return
        for i in range(self.out_count):
            packet = PyBytes_FromStringAndSize(<const char*>(self.out_buf + i * OUT_SIZE),
                                               self.out_len[i])
            if self.tx[self.out_tx[i]].framed:
                self.framed_out.append((packet, self.tx_addr[self.out_tx[i]]))
            else:
                self.collected.append((packet, _address(&self.tx[self.out_tx[i]].sa)))
        self.out_count = 0

    cdef void _collect_framed(self):
        """The pending packets to framed transports (their group is -1), for drain_framed."""
        cdef int i
        for i in range(self.out_count):
            if self.out_group[i] < 0:
                self.framed_out.append((
                    PyBytes_FromStringAndSize(<const char*>(self.out_buf + i * OUT_SIZE),
                                              self.out_len[i]),
                    self.tx_addr[self.out_tx[i]],
                ))

    cdef int _recv_batch(self, int fd) noexcept nogil:
        """One ``recvmmsg`` of up to BATCH datagrams into the receive slots (their sources
        in ``recv_addr``); returns what it returned."""
        cdef int i
        for i in range(BATCH):
            self.recv_iov[i].iov_base = self.recv_buf + i * RECV_SIZE
            self.recv_iov[i].iov_len = RECV_SIZE
            memset(&self.recv_msgs[i], 0, sizeof(mmsghdr))
            self.recv_msgs[i].msg_hdr.msg_name = &self.recv_addr[i]
            self.recv_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.recv_msgs[i].msg_hdr.msg_iov = &self.recv_iov[i]
            self.recv_msgs[i].msg_hdr.msg_iovlen = 1
        return recvmmsg(fd, self.recv_msgs, BATCH, MSG_DONTWAIT, NULL)

    cdef void _flush_nogil(self) noexcept nogil:
        """Send the pending packets: consecutive packets to one subscriber of equal size (the
        last may be shorter) go out as one UDP GSO send, everything in one ``sendmmsg``."""
        cdef int i, g, d, n, length, groups = 0, pos = 0, framed = 0
        cdef tx_t* t
        cdef msghdr* hdr
        cdef cmsghdr* cm
        if self.fd < 0:
            with gil:
                self._flush()
            return
        if self.rsend_count:
            self._relay_flush()
        for i in range(self.out_count):
            d = self.out_tx[i]
            length = self.out_len[i]
            if self.tx[d].framed:
                self.out_group[i] = -1  # not for the UDP socket: handed back
                framed += 1
                continue
            g = self.open_group[d] if self.gso else -1
            if (g >= 0 and not self.grp_closed[g] and self.grp_n[g] < GSO_SEGMENTS
                    and length <= self.grp_seg[g]):
                self.grp_n[g] += 1
                self.grp_bytes[g] += length
                if length < self.grp_seg[g]:
                    self.grp_closed[g] = True  # a shorter segment must be the last
            else:
                g = groups
                groups += 1
                self.grp_tx[g] = d
                self.grp_seg[g] = length
                self.grp_n[g] = 1
                self.grp_bytes[g] = length
                self.grp_closed[g] = False
                self.open_group[d] = g
            self.out_group[i] = g
        for g in range(groups):
            self.grp_start[g] = pos
            pos += self.grp_n[g]
            self.grp_n[g] = 0
            self.open_group[self.grp_tx[g]] = -1
        for i in range(self.out_count):
            g = self.out_group[i]
            if g < 0:
                continue
            n = self.grp_start[g] + self.grp_n[g]
            self.grp_n[g] += 1
            self.out_iov[n].iov_base = self.out_buf + i * OUT_SIZE
            self.out_iov[n].iov_len = self.out_len[i]
        for g in range(groups):
            t = &self.tx[self.grp_tx[g]]
            hdr = &self.out_msgs[g].msg_hdr
            memset(&self.out_msgs[g], 0, sizeof(mmsghdr))
            hdr.msg_name = &t.sa
            hdr.msg_namelen = t.salen
            hdr.msg_iov = &self.out_iov[self.grp_start[g]]
            hdr.msg_iovlen = self.grp_n[g]
            if self.grp_n[g] > 1:
                hdr.msg_control = self.grp_cmsg[g]
                hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
                cm = CMSG_FIRSTHDR(hdr)
                cm.cmsg_level = SOL_UDP
                cm.cmsg_type = UDP_SEGMENT
                cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                (<uint16_t*>CMSG_DATA(cm))[0] = <uint16_t>self.grp_seg[g]
                self.gso_sends += 1
        self._send_groups(groups)
        if framed:
            with gil:
                self._collect_framed()
        self.out_count = 0

    cdef void _send_groups(self, int groups) noexcept nogil:
        cdef int done = 0
        cdef int r, i, lost
        while done < groups:
            r = sendmmsg(self.fd, &self.out_msgs[done], groups - done, MSG_DONTWAIT)
            if r > 0:
                done += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK):
                for i in range(done, groups):  # socket buffer full: drop the rest
                    self.send_errors += self.out_msgs[i].msg_hdr.msg_iovlen
                break
            else:
                lost = <int>self.out_msgs[done].msg_hdr.msg_iovlen
                if lost > 1 and self.gso:
                    self.gso = False  # the kernel refused GSO: send one by one from now on
                    self._send_one_by_one(&self.out_msgs[done].msg_hdr)
                else:
                    self.send_errors += lost  # this destination failed (e.g. unreachable)
                done += 1

    cdef void _send_one_by_one(self, msghdr* hdr) noexcept nogil:
        cdef mmsghdr one
        cdef size_t i
        for i in range(hdr.msg_iovlen):
            memset(&one, 0, sizeof(mmsghdr))
            one.msg_hdr.msg_name = hdr.msg_name
            one.msg_hdr.msg_namelen = hdr.msg_namelen
            one.msg_hdr.msg_iov = &hdr.msg_iov[i]
            one.msg_hdr.msg_iovlen = 1
            if sendmmsg(self.fd, &one, 1, MSG_DONTWAIT) != 1:
                self.send_errors += 1

    cdef inline void _log(self, int stream, int flags, long long ext_seq, long long ts,
                          double now, int size, int twcc, int level, int forwarded,
                          long long out_bytes) noexcept nogil:
        cdef record_t* r
        if self.log_count >= self.log_capacity:
            self.log_overflow += 1
            return
        r = &self.log[self.log_count]
        self.log_count += 1
        r.stream = stream
        r.flags = flags
        r.ext_seq = ext_seq
        r.timestamp = ts
        r.now = now
        r.size = size
        r.twcc = twcc
        r.level = level
        r.forwarded = forwarded
        r.out_bytes = out_bytes

    cdef int _handle(self, uint8_t* data, Py_ssize_t n, const addr_key_t* key,
                     double now) noexcept nogil:
        """Forward one datagram if it is media of a registered stream (1), else 0."""
        cdef int h, i, si
        cdef uint32_t ssrc
        cdef tx_t* t
        cdef Py_ssize_t m
        if n < 12 or data[0] < 128 or data[0] > 191 or (192 <= data[1] <= 223):
            return 0
        h = self._lookup(key)
        if h < 0:
            return 0
        t = &self.tx[h]
        ssrc = _be32(data + 8)
        si = -1
        for i in range(t.nstreams):
            if t.ssrcs[i] == ssrc:
                si = t.streams[i]
                break
        if si < 0 or n > WORK_SIZE:
            return 0
        memcpy(self.work, data, n)  # a failed unprotect leaves the original for the slow path
        m = srtp_unprotect_rtp(t.inbound, self.work, n)
        if m < 0:
            return 0
        self.fast_packets += 1
        self.fast_bytes += n
        self._ingest(t, &self.streams[si], si, self.work, m, now)
        return 1

    cdef void _ingest(self, tx_t* t, stream_t* st, int handle, uint8_t* p, Py_ssize_t n,
                      double now) noexcept nogil:
        # The packet is parsed once, here (``_rtp.pxd``): the classification below, the VP8
        # descriptor, and per route the munger's rewrite, the extension-id rewrite and the
        # SRTP protect all read ``v`` (a rewritten copy keeps the header's layout).
        cdef int flags = 0
        cdef int twcc = 0
        cdef int level = 0
        cdef int r, forwarded = 0
        cdef long long out_bytes = 0
        cdef long long ext_seq
        cdef uint32_t ts
        cdef Py_ssize_t nout, wire
        cdef rtp_view_t v
        cdef info_t info
        cdef uint32_t abs_time
        cdef route_t* route
        cdef tx_t* out
        cdef uint8_t* slot
        cdef int i
        cdef long long stamp
        if rtp_parse(&v, p, n, t.twcc_id, t.level_id if st.kind == K_AUDIO else 0) != RTP_OK:
            self._log(handle, FL_HEADER_BAD | RTP_DEFECT_HEADER << FL_REASON_SHIFT, 0, 0, now,
                      <int>n, 0, 0, 0, 0)
            return
        ts = v.timestamp
        # Refused (never forwarded, the reason in the record): what ingest.py refuses.
        if v.defect != RTP_DEFECT_NONE and v.defect != RTP_DEFECT_NO_PAYLOAD:
            self._log(handle, FL_MALFORMED_EXT | v.defect << FL_REASON_SHIFT, 0, ts, now,
                      <int>n, 0, 0, 0, 0)
            return
        if t.twcc_id:
            r = rtp_ext_find(&v, &v.twcc)
            if r < 0:  # not reached: the defect check admitted the block
                self._log(handle, FL_MALFORMED_EXT | RTP_DEFECT_EXT_ELEMENT << FL_REASON_SHIFT,
                          0, ts, now, <int>n, 0, 0, 0, 0)
                return
            if r == 1 and v.twcc.len == 2:
                twcc = (p[v.twcc.pos] << 8) | p[v.twcc.pos + 1]
                flags |= FL_TWCC
        ext_seq = _unwrap(st.unwrap, v.seq)
        if v.defect != RTP_DEFECT_NONE or (
            not st.any_payload_type
            and not (st.payload_types[v.payload_type >> 6] >> (v.payload_type & 63)) & 1
        ):
            # A bare header, or a payload type no route's munger maps: dropped on every route
            # as padding is (no subscriber sees a hole where it was).
            self._skip(st, ext_seq)
            flags |= FL_PADDING | (v.defect if v.defect != RTP_DEFECT_NONE
                                   else REFUSED_PAYLOAD_TYPE) << FL_REASON_SHIFT
            self._log(handle, flags, ext_seq, ts, now, <int>n, twcc, 0, 0, 0)
            return
        cache_put(st.cache, p, n, ext_seq, now)
        info.has_vp8 = False
        if st.kind == K_VP8:
            if v.payload_offset < 0:
                self._log(handle, flags | FL_MALFORMED_EXT | RTP_DEFECT_EXT_ELEMENT << FL_REASON_SHIFT,
                          0, ts, now, <int>n, twcc, 0, 0, 0)
                return
            if v.payload_end <= v.payload_offset:
                # Padding only (RFC 3550 §5.1; e.g. bandwidth probes): nothing to forward, but
                # the packet had a place in the sequence: every route that would have carried
                # it leaves none, so its subscriber sees no loss that never happened.
                self._skip(st, ext_seq)
                self._log(handle, flags | FL_PADDING, ext_seq, ts, now, <int>n, twcc, 0, 0, 0)
                return
            # The descriptor is read up to the packet's end (padding included), as the
            # reference's parse_vp8(packet, offset) does.
            if vp8_parse(p, v.payload_offset, n, &info.desc) < 0:
                self._skip(st, ext_seq)  # no subscriber sees a hole where it was
                self._log(handle, flags | FL_MALFORMED_PAYLOAD
                          | REFUSED_DESCRIPTOR << FL_REASON_SHIFT, ext_seq, ts, now, <int>n,
                          twcc, 0, 0, 0)
                return
            info.has_vp8 = True
            info.offset = v.payload_offset
            info.is_keyframe = info.desc.is_keyframe
            info.is_start = info.desc.is_start_of_frame
            info.temporal_id = info.desc.temporal_id
            info.layer_sync = info.desc.layer_sync or info.desc.temporal_id <= 0
            if info.is_keyframe and info.is_start:
                flags |= FL_KEYFRAME
        else:
            info.is_keyframe = False
            info.is_start = True
            info.temporal_id = -1
            info.layer_sync = True
            info.offset = 0
            if t.level_id:
                r = rtp_ext_find(&v, &v.level)
                if r < 0:
                    self._log(handle, flags | FL_MALFORMED_EXT
                              | RTP_DEFECT_EXT_ELEMENT << FL_REASON_SHIFT, 0, ts, now, <int>n, twcc, 0, 0,
                              0)
                    return
                if r == 1 and v.level.len == 1:
                    level = p[v.level.pos] & 0x7F
                    flags |= FL_LEVEL
                    if p[v.level.pos] & 0x80:
                        flags |= FL_VAD
        if st.relay or st.noutputs:
            # A pipe relays this publication: the packet as it came (E2EE payloads untouched)
            # goes to the relay outputs here, and to the Python taps after this batch on the
            # event loop (drain_relay) when some tap is not an output or an output refused it.
            self._relay(st, handle, p, n)
        abs_time = <uint32_t>(<long long>nearbyint(now * 262144.0) & 0xFFFFFF)
        for i in range(st.nroutes):
            route = &st.routes[i]
            if not self._sendable(route):
                # No SRTP context toward this subscriber yet (its DTLS handshake is still
                # running): the route is left exactly as it was. Deciding here would switch
                # its layer and number a packet it never receives (a first keyframe lost).
                continue
            if self.out_count >= OUT_SLOTS:
                self._flush_nogil()
            slot = self.out_buf + self.out_count * OUT_SIZE
            out = &self.tx[route.out]
            stamp = out.paced_history.next if out.paced_history != NULL else -1
            nout = self._route(route, st, &v, p, ext_seq, &info, now, abs_time, slot)
            if nout <= 0:
                continue
            if out.drop_every:
                out.drop_seen += 1
                if out.drop_seen % out.drop_every == 0:
                    self.impaired_drops += 1  # "sent": lost on the way, as far as we know
                    forwarded += 1
                    out_bytes += nout
                    continue
            # The copy keeps the ingress header's layout: its header ends at the payload.
            wire = srtp_protect_rtp_header(out.outbound, slot, nout, OUT_SIZE, v.payload_offset)
            if wire < 0:
                self.protect_errors += 1
                continue
            if out.pacer != NULL:
                # Paced: the copy waits in the transport's queue (its number, if it was
                # stamped, is the tag the release restamps in the send history).
                if stamp >= 0 and out.paced_history.next != stamp:
                    stamp = stamp & 0xFFFF
                else:
                    stamp = -1
                pacer_push(out.pacer, slot, <int>wire, P_AUDIO if st.kind == K_AUDIO else P_VIDEO,
                           stamp, now)
                if not out.paced_pending:
                    out.paced_pending = True
                    self.paced_list[self.paced_count] = route.out
                    self.paced_count += 1
                self.paced_packets += 1  # counted as sent when the pacer lets it go
                forwarded += 1
                out_bytes += nout
                continue
            self.out_tx[self.out_count] = route.out
            self.out_len[self.out_count] = <int>wire
            self.out_count += 1
            self.sent_packets += 1
            self.sent_bytes += wire
            forwarded += 1
            out_bytes += nout
        self._log(handle, flags, ext_seq, ts, now, <int>n, twcc, level, forwarded, out_bytes)
        st.packets += 1
        if (forwarded and self.sampling and not (st.packets & self.sample_mask)
                and self.latency_count < LATENCY_SLOTS):
            self.latency[self.latency_count] = _monotonic() - now
            self.latency_count += 1

    cdef void _skip(self, stream_t* st, long long ext_seq) noexcept nogil:
        """``Subscription.skip`` on every route: a packet of the stream that carries nothing
        to forward (padding only) leaves no hole in the outgoing sequence of a route whose
        current layer is this stream's (audio: every route). The munger's drop, as for a
        filtered temporal layer; the layer selector is not asked (no decision on padding)."""
        cdef route_t* r
        cdef int i
        for i in range(st.nroutes):
            r = &st.routes[i]
            if not self._sendable(r):
                continue  # not sendable yet: untouched, as in the fan-out loop
            if r.selector == NULL or selector_current_spatial(r.selector) == st.layer:
                munger_drop(r.munger, ext_seq)

    cdef inline bint _sendable(self, const route_t* r) noexcept nogil:
        """Whether the route's subscriber transport is registered (it has SRTP keys and an
        address): ``ingest.py``'s ``ready``."""
        return r.out >= 0 and self.tx[r.out].used and not self.tx[r.out].source

    cdef Py_ssize_t _route(self, route_t* r, stream_t* st, const rtp_view_t* v,
                           const uint8_t* p, long long ext_seq, info_t* info, double now,
                           uint32_t abs_time, uint8_t* buf) noexcept nogil:
        """``Subscription.forward``: decide and rewrite into ``buf``; 0 sends nothing."""
        cdef int decision
        cdef Py_ssize_t m
        cdef vp8_translation_t tr
        cdef bint translated = False
        cdef long long out_seq
        cdef route_state_t* state = r.state
        cdef uint32_t out_ts
        if r.selector == NULL:
            if state.blocked:
                munger_drop(r.munger, ext_seq)
                return 0
        else:
            decision = selector_decide(r.selector, st.layer, info.temporal_id,
                                       info.is_keyframe, info.is_start, now, info.layer_sync)
            if decision == 0:
                if selector_current_spatial(r.selector) == st.layer:
                    munger_drop(r.munger, ext_seq)
                    if r.vp8 != NULL and info.has_vp8:
                        vp8_drop(r.vp8, &info.desc)
                return 0
            if decision == 2:
                munger_switch_source(r.munger, ext_seq, v.timestamp, now, st.ssrc)
                if r.vp8 != NULL:
                    vp8_switch_source(r.vp8)
        m = munger_munge_view(r.munger, v, p, ext_seq, now, buf, MUNGE_LIMIT)
        if m <= 0:
            return 0
        if r.vp8 != NULL and info.has_vp8:
            if not vp8_translate(r.vp8, &info.desc, st.ssrc, &tr):
                return 0
            vp8_apply(buf, info.offset, &tr)
            translated = True
        # Transport-wide CC (draft-holmer §2): the subscriber transport's next sequence number
        # goes into the packet's transport-cc element, and the packet into its send history.
        if r.history == NULL:
            ext_apply_view(r.ext, buf, v, abs_time, -1)
        elif ext_apply_view(r.ext, buf, v, abs_time, <int>(r.history.next & 0xFFFF)) == 1:
            history_record(r.history, <int>m, now, -1)
        if munger_last_out_seq(r.munger, &out_seq):
            out_ts = _be32(buf + 4)
            if translated:
                _record_history(state, out_seq, ext_seq, out_ts, st.layer, True,
                                tr.picture_id, tr.tl0picidx, tr.keyidx)
            else:
                _record_history(state, out_seq, ext_seq, out_ts, st.layer, False, -1, -1, -1)
            _on_sent(state, out_ts, m, now)
        state.forwarded += 1
        return m
