# cython: language_level=3
"""Compiled send history and delay detector: the contract (and the constants' reasons) of
``_bwe_py.py``. The same floating-point operations run in the same order, so both agree
exactly; the build compiles this module without floating-point contraction."""

from libc.stdlib cimport calloc, free

from sfu._fastpath._bwe_py import (
    BURST_INTERVAL,
    CLUSTER_SLOTS,
    HISTORY_CAPACITY,
    K_DOWN,
    K_UP,
    MAX_DELTAS,
    OVERUSE_TIME,
    SMOOTHING,
    THRESHOLD_INITIAL,
    THRESHOLD_MAX,
    THRESHOLD_MAX_STEP,
    THRESHOLD_MIN,
    THRESHOLD_OUTLIER,
    TREND_GAIN,
    TREND_WINDOW,
    WITHDRAWN,
)

cdef enum:
    _NORMAL = 0
    _OVERUSE = 1
    _UNDERUSE = 2
    _WINDOW = 20
    _SLOTS = 8

assert (TREND_WINDOW, CLUSTER_SLOTS) == (_WINDOW, _SLOTS)

cdef double _BURST = BURST_INTERVAL
cdef double _SMOOTHING = SMOOTHING
cdef int _MAX_DELTAS = MAX_DELTAS
cdef double _GAIN = TREND_GAIN
cdef double _TH_INITIAL = THRESHOLD_INITIAL
cdef double _TH_MIN = THRESHOLD_MIN
cdef double _TH_MAX = THRESHOLD_MAX
cdef double _K_UP = K_UP
cdef double _K_DOWN = K_DOWN
cdef double _OUTLIER = THRESHOLD_OUTLIER
cdef double _MAX_STEP = THRESHOLD_MAX_STEP
cdef double _OVERUSE_TIME = OVERUSE_TIME
cdef int _WITHDRAWN = WITHDRAWN


cdef int history_record(history_t* h, int size, double now, int cluster) noexcept nogil:
    cdef long long seq = h.next
    cdef long long slot = seq & h.mask
    h.sent[slot] = now
    h.size[slot] = size
    h.cluster[slot] = cluster
    h.acked[slot] = 0
    h.next = seq + 1
    h.bytes += size
    return <int>(seq & 0xFFFF)


cdef inline long long _slot(const history_t* h, long long seq) noexcept nogil:
    cdef long long newest = h.next - 1
    cdef long long ext = newest - ((newest - seq) & 0xFFFF)
    if ext < 0 or newest - ext > h.mask:
        return -1
    return ext & h.mask


cdef int history_restamp(history_t* h, long long seq, double now) noexcept nogil:
    cdef long long slot = _slot(h, seq & 0xFFFF)
    if slot < 0:
        return 0
    h.sent[slot] = now
    return 1


cdef int history_withdraw(history_t* h, long long seq) noexcept nogil:
    cdef long long slot = _slot(h, seq & 0xFFFF)
    if slot < 0 or h.acked[slot]:
        return 0
    h.cluster[slot] = _WITHDRAWN
    h.withdrawn += 1
    return 1


cdef class SendHistory:
    """What was sent on one transport, by transport-wide sequence number (a fixed ring)."""

    def __cinit__(self, long long capacity=HISTORY_CAPACITY):
        if capacity < 16 or capacity & (capacity - 1) or capacity > 1 << 20:
            raise ValueError("capacity must be a power of two in 16..1048576")
        self.h.mask = capacity - 1
        self.h.next = 0
        self.h.bytes = 0
        self.h.withdrawn = 0
        self.h.sent = <double*>calloc(capacity, sizeof(double))
        self.h.size = <int*>calloc(capacity, sizeof(int))
        self.h.cluster = <int*>calloc(capacity, sizeof(int))
        self.h.acked = <unsigned char*>calloc(capacity, 1)
        if (self.h.sent == NULL or self.h.size == NULL or self.h.cluster == NULL
                or self.h.acked == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self.h.sent)
        free(self.h.size)
        free(self.h.cluster)
        free(self.h.acked)

    @property
    def capacity(self):
        """Packets remembered."""
        return self.h.mask + 1

    @property
    def packets(self):
        """Packets recorded so far."""
        return self.h.next

    @property
    def bytes(self):
        """Bytes recorded so far."""
        return self.h.bytes

    @property
    def next_seq(self):
        """The 16-bit transport-wide sequence number the next packet gets."""
        return self.h.next & 0xFFFF

    def record(self, int size, double now, int cluster):
        """Record a packet under :attr:`next_seq`, which it returns."""
        return history_record(&self.h, size, now, cluster)

    def lookup(self, seq):
        """(send time, size, cluster) of the packet sent with 16-bit ``seq``, if remembered."""
        cdef long long slot = _slot(&self.h, int(seq) & 0xFFFF)
        if slot < 0:
            return None
        return (self.h.sent[slot], self.h.size[slot], self.h.cluster[slot])

    def restamp(self, seq, double now):
        """The packet sent with 16-bit ``seq`` left at ``now`` (a pacer held it); False if it
        is no longer remembered."""
        return bool(history_restamp(&self.h, int(seq) & 0xFFFF, now))

    def withdraw(self, seq):
        """The packet numbered 16-bit ``seq`` never left: see the reference."""
        return bool(history_withdraw(&self.h, int(seq) & 0xFFFF))

    @property
    def withdrawn(self):
        """Packets withdrawn so far."""
        return self.h.withdrawn


cdef struct detector_t:
    double cur[4]
    double prev[4]
    bint has_cur
    bint has_prev
    int num_deltas
    bint has_first
    double first_arrival
    double acc
    double smoothed
    double wx[_WINDOW]
    double wy[_WINDOW]
    int wpos
    int wn
    double time_over
    int overuse_count
    double prev_trend
    double last_update
    int state
    double trend
    double threshold
    long long c_id[_SLOTS]
    long long c_packets[_SLOTS]
    long long c_bytes[_SLOTS]
    long long c_first_size[_SLOTS]
    long long c_last_size[_SLOTS]
    double c_first_send[_SLOTS]
    double c_last_send[_SLOTS]
    double c_first_arrival[_SLOTS]
    double c_last_arrival[_SLOTS]


cdef void _cluster_ack(detector_t* d, int cluster, int size, double send,
                       double arrival) noexcept nogil:
    cdef int slot = cluster % _SLOTS
    if d.c_id[slot] != cluster:
        d.c_id[slot] = cluster
        d.c_packets[slot] = 0
        d.c_bytes[slot] = 0
        d.c_first_size[slot] = size
        d.c_first_send[slot] = send
        d.c_first_arrival[slot] = arrival
        d.c_last_send[slot] = send
        d.c_last_arrival[slot] = arrival
    d.c_packets[slot] += 1
    d.c_bytes[slot] += size
    if send < d.c_first_send[slot]:
        d.c_first_send[slot] = send
    if send >= d.c_last_send[slot]:
        d.c_last_send[slot] = send
        d.c_last_size[slot] = size
    if arrival < d.c_first_arrival[slot]:
        d.c_first_arrival[slot] = arrival
        d.c_first_size[slot] = size
    if arrival > d.c_last_arrival[slot]:
        d.c_last_arrival[slot] = arrival


cdef double _slope(detector_t* d) noexcept nogil:
    cdef int start = d.wpos
    cdef int k, j
    cdef double sx = 0.0, sy = 0.0, mx, my, num = 0.0, den = 0.0, dx
    for k in range(_WINDOW):
        j = (start + k) % _WINDOW
        sx += d.wx[j]
        sy += d.wy[j]
    mx = sx / _WINDOW
    my = sy / _WINDOW
    for k in range(_WINDOW):
        j = (start + k) % _WINDOW
        dx = d.wx[j] - mx
        num += dx * (d.wy[j] - my)
        den += dx * dx
    if den == 0.0:
        return d.trend
    return num / den


cdef void _adapt(detector_t* d, double modified, double now_ms) noexcept nogil:
    cdef double magnitude, k, step, threshold
    if d.last_update < 0.0:
        d.last_update = now_ms
    magnitude = modified if modified >= 0.0 else -modified
    if magnitude > d.threshold + _OUTLIER:
        d.last_update = now_ms
        return
    k = _K_DOWN if magnitude < d.threshold else _K_UP
    step = now_ms - d.last_update
    if step > _MAX_STEP:
        step = _MAX_STEP
    threshold = d.threshold + k * (magnitude - d.threshold) * step
    if threshold < _TH_MIN:
        threshold = _TH_MIN
    elif threshold > _TH_MAX:
        threshold = _TH_MAX
    d.threshold = threshold
    d.last_update = now_ms


cdef void _detect(detector_t* d, double send_delta, double now_ms) noexcept nogil:
    cdef double trend, scaled, modified, threshold
    if d.num_deltas < 2:
        d.state = _NORMAL
        return
    trend = d.trend
    scaled = (d.num_deltas if d.num_deltas < _MAX_DELTAS else _MAX_DELTAS) * trend
    modified = scaled * _GAIN
    threshold = d.threshold
    if modified > threshold:
        if d.time_over < 0.0:
            d.time_over = send_delta / 2.0
        else:
            d.time_over += send_delta
        d.overuse_count += 1
        if d.time_over > _OVERUSE_TIME and d.overuse_count > 1 and trend >= d.prev_trend:
            d.time_over = 0.0
            d.overuse_count = 0
            d.state = _OVERUSE
    elif modified < -threshold:
        d.time_over = -1.0
        d.overuse_count = 0
        d.state = _UNDERUSE
    else:
        d.time_over = -1.0
        d.overuse_count = 0
        d.state = _NORMAL
    d.prev_trend = trend
    _adapt(d, modified, now_ms)


cdef void _trendline(detector_t* d, double arrival_delta, double send_delta,
                     double arrival_ms) noexcept nogil:
    if d.num_deltas < 1000:
        d.num_deltas += 1
    if not d.has_first:
        d.first_arrival = arrival_ms
        d.has_first = True
    d.acc += arrival_delta - send_delta
    d.smoothed = _SMOOTHING * d.smoothed + (1.0 - _SMOOTHING) * d.acc
    d.wx[d.wpos] = arrival_ms - d.first_arrival
    d.wy[d.wpos] = d.smoothed
    d.wpos = (d.wpos + 1) % _WINDOW
    if d.wn < _WINDOW:
        d.wn += 1
    if d.wn == _WINDOW:
        d.trend = _slope(d)
    _detect(d, send_delta, arrival_ms)


cdef void _packet(detector_t* d, double send, double arrival) noexcept nogil:
    cdef double arrival_gap, send_delta, arrival_delta
    cdef bint burst
    cdef int k
    if not d.has_cur:
        d.cur[0] = send
        d.cur[1] = send
        d.cur[2] = arrival
        d.cur[3] = arrival
        d.has_cur = True
        return
    if send < d.cur[0]:
        return
    arrival_gap = arrival - d.cur[3]
    burst = arrival_gap - (send - d.cur[1]) < 0.0 and arrival_gap <= _BURST
    if send - d.cur[0] <= _BURST or burst:
        if send > d.cur[1]:
            d.cur[1] = send
        if arrival > d.cur[3]:
            d.cur[3] = arrival
        return
    if d.has_prev:
        send_delta = d.cur[1] - d.prev[1]
        arrival_delta = d.cur[3] - d.prev[3]
        _trendline(d, arrival_delta * 1000.0, send_delta * 1000.0, d.cur[3] * 1000.0)
    for k in range(4):
        d.prev[k] = d.cur[k]
    d.has_prev = True
    d.cur[0] = send
    d.cur[1] = send
    d.cur[2] = arrival
    d.cur[3] = arrival


cdef class DelayDetector:
    """Inter-arrival grouping, trendline slope and overuse detection of one transport."""

    cdef detector_t d

    def __cinit__(self):
        cdef int i
        self.d.has_cur = False
        self.d.has_prev = False
        self.d.num_deltas = 0
        self.d.has_first = False
        self.d.first_arrival = 0.0
        self.d.acc = 0.0
        self.d.smoothed = 0.0
        for i in range(_WINDOW):
            self.d.wx[i] = 0.0
            self.d.wy[i] = 0.0
        self.d.wpos = 0
        self.d.wn = 0
        self.d.time_over = -1.0
        self.d.overuse_count = 0
        self.d.prev_trend = 0.0
        self.d.last_update = -1.0
        self.d.state = _NORMAL
        self.d.trend = 0.0
        self.d.threshold = _TH_INITIAL
        for i in range(_SLOTS):
            self.d.c_id[i] = -1

    @property
    def state(self):
        """The latest detector state (NORMAL 0, OVERUSE 1, UNDERUSE 2)."""
        return self.d.state

    @property
    def trend(self):
        """The latest trendline slope."""
        return self.d.trend

    @property
    def threshold(self):
        """The adaptive overuse threshold."""
        return self.d.threshold

    def cluster(self, long long cluster):
        """What was acknowledged of probe ``cluster`` (see the reference)."""
        cdef int slot = <int>(cluster % _SLOTS) if cluster >= 0 else 0
        if cluster < 0 or self.d.c_id[slot] != cluster:
            return (0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
        return (self.d.c_packets[slot], self.d.c_bytes[slot], self.d.c_first_size[slot],
                self.d.c_last_size[slot], self.d.c_first_send[slot], self.d.c_last_send[slot],
                self.d.c_first_arrival[slot], self.d.c_last_arrival[slot])

    def on_feedback(self, SendHistory history not None, seqs, arrivals_us):
        """Process the packets one feedback reports received (see the reference)."""
        cdef Py_ssize_t n = min(len(seqs), len(arrivals_us))
        cdef Py_ssize_t i
        cdef long long slot, packets = 0, total = 0
        cdef double first_send = 0.0, last_send = 0.0, first_arrival = 0.0
        cdef double last_arrival = 0.0, send, arrival
        cdef int size, cluster
        cdef history_t* h = &history.h
        cdef detector_t* d = &self.d
        for i in range(n):
            slot = _slot(h, (<long long>seqs[i]) & 0xFFFF)
            if slot < 0 or h.acked[slot]:
                continue
            h.acked[slot] = 1
            send = h.sent[slot]
            size = h.size[slot]
            arrival = (<long long>arrivals_us[i]) / 1000000.0
            if packets == 0:
                first_send = send
                first_arrival = arrival
            else:
                if send < first_send:
                    first_send = send
                if arrival < first_arrival:
                    first_arrival = arrival
            if send > last_send or packets == 0:
                last_send = send
            if arrival > last_arrival or packets == 0:
                last_arrival = arrival
            packets += 1
            total += size
            cluster = h.cluster[slot]
            if cluster >= 0:
                _cluster_ack(d, cluster, size, send, arrival)
            _packet(d, send, arrival)
        return (packets, total, first_send, last_send, first_arrival, last_arrival)
