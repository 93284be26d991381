# cython: language_level=3
# C-level interface of the lane kernel, for the forwarding loop (``_forward.pyx``):
#
#     from sfu._fastpath._lane cimport RelayOutput, relay_out_t, lane_seal
#
#     cdef relay_out_t* o = &(<RelayOutput>output).o     # keep a reference to output
#     # the pipe datagram at buf + LANE_HEADER_BYTES, n bytes; room for LANE_TAG_BYTES after
#     with nogil:
#         total = lane_seal(o.lane, buf, n)               # < 0: not sealed (hand it back)
#
# Nothing here raises or touches Python objects; one forwarding thread uses a sealer at a time
# (the event loop's: the media lane seals from the same thread). Contract: ``_lane_py.py``.

from libc.stdint cimport uint8_t, uint64_t


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass


cdef enum:
    LANE_HEADER_BYTES = 9       # _lane_shared.HEADER_BYTES
    LANE_TAG_BYTES = 16         # _lane_shared.TAG_BYTES
    LANE_VERSION = 0x20         # _lane_shared.VERSION
    LANE_SOCKADDR_BYTES = 128   # sizeof(struct sockaddr_storage)


ctypedef struct lane_t:
    EVP_CIPHER_CTX* ctx         # AES-128-GCM, keyed; the IV is set per datagram
    int epoch
    uint64_t counter            # the next datagram's nonce
    bint spent                  # the counter's 64 bits are used up
    unsigned long long used     # sealed with the current key
    unsigned long long sealed   # sealed with any key
    unsigned long long limit    # datagrams one key may seal
    bint active                 # the lane's owner allows sealing


ctypedef struct opener_t:
    EVP_CIPHER_CTX* ctx[2]      # the peer's keys (AES-128-GCM, decrypting), NULL: free slot
    int epoch[2]
    unsigned long long age[2]   # order of arrival: the oldest is replaced first
    unsigned long long added
    bint any                    # a datagram was opened: highest is set
    uint64_t highest            # the highest counter opened
    uint64_t ring[16]           # bit c % 1024: counter c (within 1024 of highest) was opened
    unsigned long long received
    unsigned long long malformed
    unsigned long long unknown_key
    unsigned long long replayed
    unsigned long long auth_failed


ctypedef struct relay_out_t:
    lane_t* lane                # NULL: plain datagrams (a pipe between workers of one node)
    int fd                      # -1: kept for drain_relay_sent()
    uint8_t sa[LANE_SOCKADDR_BYTES]
    unsigned int salen
    uint8_t prefix[8]           # the flow id, a QUIC varint
    int prefix_n
    int max_datagram            # largest pipe datagram (prefix + packet) before sealing
    unsigned long long spatial_mask
    unsigned long long packets
    unsigned long long bytes
    unsigned long long filtered
    unsigned long long failed


# Seal in place: buf[LANE_HEADER_BYTES:LANE_HEADER_BYTES + n] holds the pipe datagram; the
# header goes before it and the tag after (room for LANE_TAG_BYTES). Returns the lane
# datagram's length, or -1 when sealing is not allowed now (inactive, limit, counter spent).
cdef Py_ssize_t lane_seal(lane_t* s, uint8_t* buf, Py_ssize_t n) noexcept nogil


# Open in place: buf holds a lane datagram of n bytes; the pipe datagram is left at
# buf + LANE_HEADER_BYTES. Returns its length, or -1 (counted by reason in the opener).
cdef Py_ssize_t lane_open(opener_t* o, uint8_t* buf, Py_ssize_t n) noexcept nogil


cdef class LaneSealer:
    cdef lane_t s


cdef class LaneOpener:
    cdef opener_t o


cdef class RelayOutput:
    cdef relay_out_t o
    cdef readonly object sealer
    cdef readonly object sock
    cdef readonly tuple address
    cdef readonly bytes prefix
