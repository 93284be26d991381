# cython: language_level=3
"""Compiled lane kernel: sealing relayed media for a node link; contract in ``_lane_py.py``.

AES-128-GCM through OpenSSL EVP (as the SRTP kernel), keyed once per key; per datagram only
the IV is set. The forwarder seals each relayed packet straight into its send batch through
:c:func:`lane_seal`, without the GIL.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from sfu._fastpath._net cimport (
    AF_INET,
    AF_INET6,
    htons,
    inet_pton,
    sockaddr_in,
    sockaddr_in6,
)

import socket

from sfu._fastpath._lane_py import normalize_address
from sfu._fastpath._lane_shared import EPOCHS, KEY_BYTES, KEY_LIMIT, KEYS_KEPT, MAX_COUNTER

assert KEYS_KEPT == 2, "opener_t holds two keys"


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    int EVP_CTRL_GCM_GET_TAG
    int EVP_CTRL_GCM_SET_TAG
    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    const EVP_CIPHER* EVP_aes_128_gcm()
    int EVP_CipherInit_ex(
        EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
        const unsigned char* key, const unsigned char* iv, int enc
    )
    int EVP_CipherUpdate(
        EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl, const unsigned char* inp, int inl
    )
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)

cdef Py_ssize_t lane_seal(lane_t* s, uint8_t* buf, Py_ssize_t n) noexcept nogil:
    cdef uint8_t iv[12]
    cdef int outl, i
    cdef uint64_t c = s.counter
    if not s.active or s.used >= s.limit or s.spent or s.ctx == NULL:
        return -1
    buf[0] = <uint8_t>(LANE_VERSION | s.epoch)
    memset(iv, 0, 4)
    for i in range(8):
        buf[1 + i] = <uint8_t>(c >> (56 - 8 * i))
        iv[4 + i] = buf[1 + i]
    if EVP_CipherInit_ex(s.ctx, NULL, NULL, NULL, iv, 1) != 1:
        return -1
    if EVP_CipherUpdate(s.ctx, NULL, &outl, buf, LANE_HEADER_BYTES) != 1:
        return -1
    if n > 0 and EVP_CipherUpdate(
        s.ctx, buf + LANE_HEADER_BYTES, &outl, buf + LANE_HEADER_BYTES, <int>n
    ) != 1:
        return -1
    if EVP_CipherFinal_ex(s.ctx, buf + LANE_HEADER_BYTES + n, &outl) != 1:
        return -1
    if EVP_CIPHER_CTX_ctrl(s.ctx, EVP_CTRL_GCM_GET_TAG, LANE_TAG_BYTES,
                           buf + LANE_HEADER_BYTES + n) != 1:
        return -1
    if c == 0xFFFFFFFFFFFFFFFFULL:
        s.spent = True
    else:
        s.counter = c + 1
    s.used += 1
    s.sealed += 1
    return LANE_HEADER_BYTES + n + LANE_TAG_BYTES


cdef enum:
    WINDOW = 1024               # _lane_shared.REPLAY_WINDOW
    VERSION_MASK = 0xF0


cdef Py_ssize_t lane_open(opener_t* o, uint8_t* buf, Py_ssize_t n) noexcept nogil:
    cdef uint8_t iv[12]
    cdef int outl, i, slot = -1
    cdef uint64_t counter = 0, behind, shift, c
    cdef Py_ssize_t body = n - LANE_HEADER_BYTES - LANE_TAG_BYTES
    if body < 0 or buf[0] & VERSION_MASK != LANE_VERSION:
        o.malformed += 1
        return -1
    for i in range(2):
        if o.ctx[i] != NULL and o.epoch[i] == buf[0] & 0x0F:
            slot = i
    if slot < 0:
        o.unknown_key += 1
        return -1
    memset(iv, 0, 4)
    for i in range(8):
        counter = (counter << 8) | buf[1 + i]
        iv[4 + i] = buf[1 + i]
    if o.any and counter <= o.highest:
        behind = o.highest - counter
        if behind >= WINDOW or (o.ring[(counter >> 6) & 15] >> (counter & 63)) & 1:
            o.replayed += 1
            return -1
    if (EVP_CipherInit_ex(o.ctx[slot], NULL, NULL, NULL, iv, 0) != 1
            or EVP_CipherUpdate(o.ctx[slot], NULL, &outl, buf, LANE_HEADER_BYTES) != 1
            or (body > 0 and EVP_CipherUpdate(o.ctx[slot], buf + LANE_HEADER_BYTES, &outl,
                                              buf + LANE_HEADER_BYTES, <int>body) != 1)
            or EVP_CIPHER_CTX_ctrl(o.ctx[slot], EVP_CTRL_GCM_SET_TAG, LANE_TAG_BYTES,
                                   buf + LANE_HEADER_BYTES + body) != 1
            or EVP_CipherFinal_ex(o.ctx[slot], buf + LANE_HEADER_BYTES + body, &outl) != 1):
        o.auth_failed += 1
        return -1
    # Only an authentic datagram moves the window (RFC 3711 section 3.3.2): the counters
    # between the old highest and the new one leave the ring, the new one enters.
    if not o.any or counter > o.highest:
        shift = counter - o.highest if o.any else WINDOW
        if shift >= WINDOW:
            memset(o.ring, 0, sizeof(o.ring))
        else:
            c = o.highest + 1
            while c != counter:
                o.ring[(c >> 6) & 15] &= ~((<uint64_t>1) << (c & 63))
                c += 1
            o.ring[(counter >> 6) & 15] &= ~((<uint64_t>1) << (counter & 63))
        o.highest = counter
        o.any = True
    o.ring[(counter >> 6) & 15] |= (<uint64_t>1) << (counter & 63)
    o.received += 1
    return body


cdef _check_key(int epoch, bytes key):
    if not 0 <= epoch < EPOCHS:
        raise ValueError(f"epoch must be in 0..{EPOCHS - 1}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"a lane key has {KEY_BYTES} bytes")


cdef class LaneSealer:
    """Compiled twin of ``_lane_py.LaneSealer`` (same contract)."""

    def __cinit__(self, int epoch, bytes key, *, limit=KEY_LIMIT):
        _check_key(epoch, key)
        if limit <= 0:
            raise ValueError("limit must be positive")
        memset(&self.s, 0, sizeof(lane_t))
        self.s.ctx = EVP_CIPHER_CTX_new()
        if self.s.ctx == NULL:
            raise MemoryError()
        if EVP_CipherInit_ex(self.s.ctx, EVP_aes_128_gcm(), NULL,
                             <const unsigned char*><const char*>key, NULL, 1) != 1:
            raise RuntimeError("libcrypto refused an AES-128-GCM key")
        self.s.epoch = epoch
        self.s.limit = limit

    def __dealloc__(self):
        if self.s.ctx != NULL:
            EVP_CIPHER_CTX_free(self.s.ctx)
            self.s.ctx = NULL

    def rekey(self, int epoch, bytes key):
        """Seal with a new key from now on (the counter goes on: nonces are per key anyway)."""
        _check_key(epoch, key)
        if EVP_CipherInit_ex(self.s.ctx, NULL, NULL,
                             <const unsigned char*><const char*>key, NULL, 1) != 1:
            raise RuntimeError("libcrypto refused an AES-128-GCM key")
        self.s.epoch = epoch
        self.s.used = 0

    def seal(self, datagram):
        """The lane datagram of one pipe datagram; None when sealing is not allowed now."""
        cdef const uint8_t[:] view = memoryview(datagram).cast("B")
        cdef Py_ssize_t n = view.shape[0], total
        cdef uint8_t* buf = <uint8_t*>malloc(n + LANE_HEADER_BYTES + LANE_TAG_BYTES)
        if buf == NULL:
            raise MemoryError()
        try:
            if n:
                memcpy(buf + LANE_HEADER_BYTES, &view[0], n)
            total = lane_seal(&self.s, buf, n)
            if total < 0:
                return None
            return PyBytes_FromStringAndSize(<const char*>buf, total)
        finally:
            free(buf)

    @property
    def epoch(self):
        return self.s.epoch

    @property
    def counter(self):
        return (<object>self.s.counter) + 1 if self.s.spent else self.s.counter

    @counter.setter
    def counter(self, value):
        # Forward only (tests skip ahead): a counter moved back would reuse a nonce.
        if not self.counter <= value <= MAX_COUNTER + 1:
            raise ValueError("the counter only moves forward, up to 2**64")
        self.s.spent = value > MAX_COUNTER
        self.s.counter = MAX_COUNTER if self.s.spent else value

    @property
    def used(self):
        return self.s.used

    @property
    def sealed(self):
        return self.s.sealed

    @property
    def limit(self):
        return self.s.limit

    @property
    def active(self):
        return self.s.active

    @active.setter
    def active(self, bint value):
        self.s.active = value


cdef class LaneOpener:
    """Compiled twin of ``_lane_py.LaneOpener`` (same contract)."""

    def __cinit__(self):
        memset(&self.o, 0, sizeof(opener_t))

    def __dealloc__(self):
        cdef int i
        for i in range(2):
            if self.o.ctx[i] != NULL:
                EVP_CIPHER_CTX_free(self.o.ctx[i])
                self.o.ctx[i] = NULL

    @property
    def has_keys(self):
        return self.o.ctx[0] != NULL or self.o.ctx[1] != NULL

    def add_key(self, int epoch, bytes key):
        """The peer's key of ``epoch`` (the newest; the oldest beyond two goes)."""
        cdef int i, slot = -1
        _check_key(epoch, key)
        for i in range(2):  # the same epoch again: replaced, and now the newest
            if self.o.ctx[i] != NULL and self.o.epoch[i] == epoch:
                slot = i
        if slot < 0:
            for i in range(2):
                if self.o.ctx[i] == NULL:
                    slot = i
                    break
        if slot < 0:
            slot = 0 if self.o.age[0] < self.o.age[1] else 1
        if self.o.ctx[slot] == NULL:
            self.o.ctx[slot] = EVP_CIPHER_CTX_new()
            if self.o.ctx[slot] == NULL:
                raise MemoryError()
        if EVP_CipherInit_ex(self.o.ctx[slot], EVP_aes_128_gcm(), NULL,
                             <const unsigned char*><const char*>key, NULL, 0) != 1:
            raise RuntimeError("libcrypto refused an AES-128-GCM key")
        self.o.epoch[slot] = epoch
        self.o.added += 1
        self.o.age[slot] = self.o.added

    def open(self, data):
        """The pipe datagram a lane datagram seals; None (counted) when dropped."""
        cdef const uint8_t[:] view = memoryview(data).cast("B")
        cdef Py_ssize_t n = view.shape[0], body
        cdef uint8_t* buf = <uint8_t*>malloc(n if n else 1)
        if buf == NULL:
            raise MemoryError()
        try:
            if n:
                memcpy(buf, &view[0], n)
            body = lane_open(&self.o, buf, n)
            if body < 0:
                return None
            return PyBytes_FromStringAndSize(<const char*>(buf + LANE_HEADER_BYTES), body)
        finally:
            free(buf)

    @property
    def received(self):
        return self.o.received

    @property
    def malformed(self):
        return self.o.malformed

    @property
    def unknown_key(self):
        return self.o.unknown_key

    @property
    def replayed(self):
        return self.o.replayed

    @property
    def auth_failed(self):
        return self.o.auth_failed


cdef class RelayOutput:
    """Compiled twin of ``_lane_py.RelayOutput`` (same contract; the forwarder's C path
    relays through its ``relay_out_t``)."""

    def __cinit__(self, sealer, sock, address, bytes prefix, *, int max_datagram,
                  spatial_mask=0):
        cdef sockaddr_in* v4
        cdef sockaddr_in6* v6
        cdef bytes host
        if sealer is not None and not isinstance(sealer, LaneSealer):
            raise TypeError("the sealer must be the compiled kernels' LaneSealer")
        if not 1 <= len(prefix) <= 8:
            raise ValueError("a flow prefix is a QUIC varint: 1 to 8 bytes")
        if max_datagram <= len(prefix):
            raise ValueError("max_datagram must leave room for a packet")
        memset(&self.o, 0, sizeof(relay_out_t))
        self.sealer = sealer
        self.sock = sock
        self.address = normalize_address(address)
        self.prefix = prefix
        name, _, scope = self.address[0].partition("%")
        host = name.encode("ascii")
        v4 = <sockaddr_in*>self.o.sa
        v6 = <sockaddr_in6*>self.o.sa
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1:
            v4.sin_family = AF_INET
            v4.sin_port = htons(<uint16_t>self.address[1])
            self.o.salen = sizeof(sockaddr_in)
        elif inet_pton(AF_INET6, host, &v6.sin6_addr) == 1:
            v6.sin6_family = AF_INET6
            v6.sin6_port = htons(<uint16_t>self.address[1])
            if scope:
                v6.sin6_scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
            self.o.salen = sizeof(sockaddr_in6)
        else:
            raise ValueError("address must be an IP literal")
        self.o.lane = NULL if sealer is None else &(<LaneSealer>sealer).s
        self.o.fd = -1 if sock is None else sock.fileno()
        memcpy(self.o.prefix, <const char*>prefix, len(prefix))
        self.o.prefix_n = <int>len(prefix)
        self.o.max_datagram = max_datagram
        self.spatial_mask = spatial_mask

    @property
    def max_datagram(self):
        return self.o.max_datagram

    @property
    def spatial_mask(self):
        return self.o.spatial_mask

    @spatial_mask.setter
    def spatial_mask(self, value):
        if value < 0:
            raise ValueError("spatial_mask must not be negative")
        self.o.spatial_mask = value & 0xFFFFFFFFFFFFFFFF

    @property
    def packets(self):
        return self.o.packets

    @property
    def bytes(self):
        return self.o.bytes

    @property
    def filtered(self):
        return self.o.filtered

    @property
    def failed(self):
        return self.o.failed
