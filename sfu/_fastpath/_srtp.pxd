# cython: language_level=3
# C-level interface of the SRTP kernel, for other Cython modules (the forwarding loop):
#
#     from sfu._fastpath._srtp cimport SrtpContext, srtp_session_t, srtp_protect_rtp
#
#     cdef srtp_session_t* s = (<SrtpContext>ctx).session   # keep a reference to ctx
#     with nogil:
#         n = srtp_protect_rtp(s, buf, n, capacity)         # < 0: an SRTP_ERR_* code
#
# Every function works in place on one packet, never raises, never touches Python objects and
# may run without the GIL. A session must not be used by two threads at once (its OpenSSL
# contexts and stream table are not locked); one forwarding thread per session is the model.
# The Python contract and the framing details are documented in _srtp_py.py.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass


# Result codes (same values as _srtp_shared.ERR_*): a result >= 0 is the new packet length.
cdef enum:
    SRTP_ERR_AUTH = -1
    SRTP_ERR_REPLAY = -2
    SRTP_ERR_MALFORMED = -3
    SRTP_ERR_STREAMS = -4
    SRTP_ERR_NO_ROOM = -5
    SRTP_ERR_DIRECTION = -6
    SRTP_ERR_CRYPTO = -7  # libcrypto itself failed: never expected; counted as malformed

cdef enum:
    SRTP_FAILURE_SLOTS = 8          # failures[] is indexed by -code
    SRTP_RING_WORDS = 16            # RTP replay ring: 1024 bits per stream
    SRTP_RING_BITS = 1024
    SRTP_MAX_TRAILER = 20           # the most protect appends (SRTCP GCM: tag + index word)
    SRTP_MAX_PACKET = 0xFFFF        # longest input packet


ctypedef struct srtp_stream_t:
    # RTP: highest 48-bit packet index (ROC << 16 | SEQ) and a ring of seen indexes
    # (bit i % 1024 stands for index i, valid for the last 1024 indexes up to rtp_index).
    uint64_t rtp_index
    uint64_t rtp_ring[SRTP_RING_WORDS]
    # SRTCP: outbound, the last index written; inbound, libsrtp's window start and a 128-bit
    # mask (bit k of word k / 64 stands for index rtcp_index + k).
    uint32_t rtcp_index
    uint64_t rtcp_mask[2]


ctypedef struct srtp_keys_t:
    EVP_CIPHER_CTX* cipher      # AES-128-CTR or AES-128-GCM, keyed once; IV set per packet
    EVP_MAC_CTX* mac            # HMAC-SHA1 keyed once (NULL for GCM)
    uint8_t salt[16]            # AES-CM: 14-byte salt + 2 zero bytes; GCM: 12-byte salt


ctypedef struct srtp_session_t:
    int aead                    # 1: AEAD_AES_128_GCM, 0: AES128_CM_SHA1_80
    int tag_len                 # 16 or 10
    int outbound                # 1: protect (repeats allowed), 0: unprotect (replays refused)
    int window                  # RTP replay window, packets (64..1024)
    int allow_repeat            # outbound: protect a sequence number again (retransmission)
    srtp_keys_t rtp
    srtp_keys_t rtcp
    Py_ssize_t n_streams        # slots in use
    Py_ssize_t capacity         # slots allocated (grows by doubling up to max_streams)
    Py_ssize_t max_streams
    Py_ssize_t last             # slot of the stream found last (lookup hint)
    uint32_t* ssrcs             # the SSRC of each slot, compact for the lookup scan
    srtp_stream_t* streams      # the state of each slot
    uint64_t failures[SRTP_FAILURE_SLOTS]


# In place: ``buf`` holds a packet of ``length`` bytes. Protect needs ``capacity`` >= length +
# tag (RTP) or length + 4 + tag (RTCP) and appends the trailer; unprotect verifies and strips
# it. Returns the new length or an SRTP_ERR_* code; every failure is counted in failures[].
# After a failed unprotect the bytes after the header are unspecified.
cdef Py_ssize_t srtp_protect_rtp(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity
) noexcept nogil
# srtp_protect_rtp of a packet whose RTP header length (fixed header, CSRCs, extension block:
# the encrypted part starts there) the caller already knows from its parse (``_rtp.pxd``
# ``payload_offset``; -1: malformed); the forwarder protects each egress copy this way.
cdef Py_ssize_t srtp_protect_rtp_header(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity, Py_ssize_t header
) noexcept nogil
cdef Py_ssize_t srtp_unprotect_rtp(srtp_session_t* s, uint8_t* buf, Py_ssize_t length) noexcept nogil
cdef Py_ssize_t srtp_protect_rtcp(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity
) noexcept nogil
cdef Py_ssize_t srtp_unprotect_rtcp(srtp_session_t* s, uint8_t* buf, Py_ssize_t length) noexcept nogil


cdef class SrtpContext:
    cdef srtp_session_t* session
    cdef readonly str profile
    cdef readonly bint outbound
    cdef readonly int tag_len
    cdef bint busy              # a batch runs without the GIL: refuse other calls meanwhile

    cdef _setup(
        self, str profile, tuple rtp, tuple rtcp, bint outbound, int replay_window,
        Py_ssize_t max_streams, bint allow_repeat_tx,
    )
    cdef srtp_session_t* _ready(self, bint outbound) except NULL
    cdef bytes _unprotect(self, object packet, bint rtcp)
    cdef Py_ssize_t _batch(
        self, object buffer, object lengths, Py_ssize_t stride, bint protect
    ) except -1
