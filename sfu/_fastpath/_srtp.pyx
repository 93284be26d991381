# cython: language_level=3
"""Compiled SRTP kernel over OpenSSL libcrypto; the contract is documented in ``_srtp_py.py``.

All cryptography is libcrypto's EVP interface (AES-128-CTR, AES-128-GCM, HMAC-SHA1 through
EVP_MAC); this module only frames packets around it. Each session keys its EVP contexts once
and sets a new IV per packet. The C functions declared in ``_srtp.pxd`` take a session and a
buffer, work in place, return a length or an error code and never need the GIL, so the
forwarding loop can call them between ``recvmmsg`` and ``sendmmsg``.
"""

from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_ND,
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset, strcmp

from sfu._fastpath._srtp_shared import (
    ERR_AUTH,
    ERR_DIRECTION,
    ERR_MALFORMED,
    ERR_NO_ROOM,
    ERR_REPLAY,
    ERR_STREAMS,
    REASONS,
    SrtpError,
    check_context_args,
    reason_for,
)


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_MAC:
        pass
    ctypedef struct ENGINE:
        pass
    int EVP_CTRL_GCM_GET_TAG
    int EVP_CTRL_GCM_SET_TAG
    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    const EVP_CIPHER* EVP_aes_128_ctr()
    const EVP_CIPHER* EVP_aes_128_gcm()
    int EVP_CipherInit_ex(
        EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
        const unsigned char* key, const unsigned char* iv, int enc,
    )
    int EVP_CipherUpdate(
        EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl, const unsigned char* inp, int inl
    )
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)
    EVP_MAC* EVP_MAC_fetch(void* libctx, const char* algorithm, const char* properties)
    void EVP_MAC_free(EVP_MAC* mac)
    EVP_MAC_CTX* EVP_MAC_CTX_new(EVP_MAC* mac)
    void EVP_MAC_CTX_free(EVP_MAC_CTX* ctx)
    int EVP_MAC_init(
        EVP_MAC_CTX* ctx, const unsigned char* key, size_t keylen, const OSSL_PARAM* params
    )
    int EVP_MAC_update(EVP_MAC_CTX* ctx, const unsigned char* data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX* ctx, unsigned char* out, size_t* outl, size_t outsize)


cdef extern from "openssl/params.h" nogil:
    ctypedef struct OSSL_PARAM:
        pass
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char* key, char* buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()


cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void* a, const void* b, size_t length)


# The C enum in _srtp.pxd must agree with the shared Python codes.
assert (SRTP_ERR_AUTH, SRTP_ERR_REPLAY, SRTP_ERR_MALFORMED, SRTP_ERR_STREAMS) == (
    ERR_AUTH, ERR_REPLAY, ERR_MALFORMED, ERR_STREAMS
)
assert (SRTP_ERR_NO_ROOM, SRTP_ERR_DIRECTION) == (ERR_NO_ROOM, ERR_DIRECTION)

cdef enum:
    SRTCP_MAX_INDEX = 0x7FFFFFFF
    RTCP_WINDOW = 128               # libsrtp's fixed SRTCP replay window
    HMAC_SHA1_LEN = 20
    STACK_PACKET = 2048             # unprotect copies packets up to this size on the stack
    # Replay verdicts.
    _NEW = 0
    _SEEN = 1
    _TOO_OLD = 2

cdef uint32_t SRTCP_E = 0x80000000  # the E (encrypted) flag of the SRTCP index word


# ---------------------------------------------------------------------------------------------
# Small helpers (all nogil)

cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline Py_ssize_t _fail(srtp_session_t* s, Py_ssize_t code) noexcept nogil:
    s.failures[-code] += 1
    return code


cdef inline Py_ssize_t _rtp_header_len(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """RTP header length with CSRCs and extension block, or -1 (libsrtp's checks)."""
    cdef Py_ssize_t header
    if n < 12:
        return -1
    header = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if n < header + 4:
            return -1
        header += 4 + 4 * ((<Py_ssize_t>p[header + 2] << 8) | p[header + 3])
    return header if n >= header else -1


cdef inline uint64_t _estimate_index(uint64_t highest, int64_t seq, int64_t* delta) noexcept nogil:
    """RFC 3711 Appendix A as libsrtp's srtp_rdbx_estimate_index; see _srtp_py."""
    cdef uint32_t local_roc, roc
    cdef int64_t local_seq
    if highest <= 0x8000:
        delta[0] = seq - <int64_t>highest
        return <uint64_t>seq
    local_roc = <uint32_t>(highest >> 16)
    local_seq = <int64_t>(highest & 0xFFFF)
    if local_seq < 0x8000:
        if seq - local_seq > 0x8000:
            roc = local_roc - 1
            delta[0] = seq - local_seq - 0x10000
        else:
            roc = local_roc
            delta[0] = seq - local_seq
    elif local_seq - 0x8000 > seq:
        roc = local_roc + 1
        delta[0] = seq - local_seq + 0x10000
    else:
        roc = local_roc
        delta[0] = seq - local_seq
    return (<uint64_t>roc << 16) | <uint64_t>seq


cdef inline srtp_stream_t* _find(srtp_session_t* s, uint32_t ssrc) noexcept nogil:
    """The stream of ``ssrc`` or NULL: the last hit, else a scan of the compact SSRC array."""
    cdef Py_ssize_t i
    cdef const uint32_t* ssrcs = s.ssrcs
    if s.last < s.n_streams and ssrcs[s.last] == ssrc:
        return &s.streams[s.last]
    for i in range(s.n_streams):
        if ssrcs[i] == ssrc:
            s.last = i
            return &s.streams[i]
    return NULL


cdef inline srtp_stream_t* _add(
    srtp_session_t* s, uint32_t ssrc, const srtp_stream_t* state
) noexcept nogil:
    """A new stream for ``ssrc`` with ``state``; NULL at max_streams (or out of memory).

    Tables grow by doubling, so a context costs memory for the SSRCs it has seen, not for
    max_streams. Growing moves the streams: pointers from before an _add are stale after it.
    """
    cdef Py_ssize_t capacity
    cdef void* grown
    if s.n_streams >= s.max_streams:
        return NULL
    if s.n_streams == s.capacity:
        capacity = s.capacity * 2 if s.capacity else 4
        if capacity > s.max_streams:
            capacity = s.max_streams
        grown = realloc(s.ssrcs, capacity * sizeof(uint32_t))
        if grown is NULL:
            return NULL
        s.ssrcs = <uint32_t*>grown
        grown = realloc(s.streams, capacity * sizeof(srtp_stream_t))
        if grown is NULL:
            return NULL
        s.streams = <srtp_stream_t*>grown
        s.capacity = capacity
    s.ssrcs[s.n_streams] = ssrc
    memcpy(&s.streams[s.n_streams], state, sizeof(srtp_stream_t))
    s.last = s.n_streams
    s.n_streams += 1
    return &s.streams[s.last]


# RTP replay ring: bit (i % 1024) stands for index i.

cdef inline bint _ring_get(const srtp_stream_t* st, uint64_t i) noexcept nogil:
    return (st.rtp_ring[(i >> 6) & (SRTP_RING_WORDS - 1)] >> (i & 63)) & 1


cdef inline void _ring_set(srtp_stream_t* st, uint64_t i) noexcept nogil:
    st.rtp_ring[(i >> 6) & (SRTP_RING_WORDS - 1)] |= (<uint64_t>1) << (i & 63)


cdef inline int _rtp_check(const srtp_session_t* s, const srtp_stream_t* st, int64_t delta) noexcept nogil:
    if delta > 0:
        return _NEW
    if -delta >= s.window:
        return _TOO_OLD
    return _SEEN if _ring_get(st, st.rtp_index + <uint64_t>delta) else _NEW


cdef inline void _rtp_add(srtp_stream_t* st, int64_t delta) noexcept nogil:
    cdef int64_t k
    cdef uint64_t i
    if delta > 0:
        if delta >= SRTP_RING_BITS:
            memset(st.rtp_ring, 0, sizeof(st.rtp_ring))
        else:
            for k in range(1, delta + 1):  # the slots the window slides onto
                i = st.rtp_index + <uint64_t>k
                st.rtp_ring[(i >> 6) & (SRTP_RING_WORDS - 1)] &= ~((<uint64_t>1) << (i & 63))
        st.rtp_index += <uint64_t>delta
        _ring_set(st, st.rtp_index)
    else:
        _ring_set(st, st.rtp_index + <uint64_t>delta)


# SRTCP inbound window (libsrtp's rdb): [rtcp_index, rtcp_index + 128).

cdef inline int _rtcp_check(const srtp_stream_t* st, uint32_t index) noexcept nogil:
    cdef uint64_t start = st.rtcp_index
    cdef uint64_t offset
    if index >= start + RTCP_WINDOW:
        return _NEW
    if index < start:
        return _TOO_OLD
    offset = index - start
    return _SEEN if (st.rtcp_mask[offset >> 6] >> (offset & 63)) & 1 else _NEW


cdef inline void _rtcp_add(srtp_stream_t* st, uint32_t index) noexcept nogil:
    cdef uint64_t offset = <uint64_t>index - st.rtcp_index
    cdef uint64_t shift
    if offset >= RTCP_WINDOW:
        shift = offset - (RTCP_WINDOW - 1)
        if shift >= 128:
            st.rtcp_mask[0] = 0
            st.rtcp_mask[1] = 0
        elif shift >= 64:
            st.rtcp_mask[0] = st.rtcp_mask[1] >> (shift - 64)
            st.rtcp_mask[1] = 0
        else:
            st.rtcp_mask[0] = (st.rtcp_mask[0] >> shift) | (st.rtcp_mask[1] << (64 - shift))
            st.rtcp_mask[1] >>= shift
        st.rtcp_index += <uint32_t>shift
        offset = RTCP_WINDOW - 1
    st.rtcp_mask[offset >> 6] |= (<uint64_t>1) << (offset & 63)


# Cryptographic primitives, all libcrypto. Return 0 on success, -1 when libcrypto fails,
# 1 (open only) when the tag does not verify.

cdef inline int _ctr(EVP_CIPHER_CTX* c, const uint8_t* iv, uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef int outl
    if EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, 1) != 1:
        return -1
    if n > 0 and EVP_CipherUpdate(c, p, &outl, p, <int>n) != 1:
        return -1
    return 0


cdef inline int _hmac(
    EVP_MAC_CTX* m, const uint8_t* a, Py_ssize_t an, const uint8_t* b, Py_ssize_t bn,
    uint8_t* out,
) noexcept nogil:
    """HMAC-SHA1 of a || b with the session's auth key, 20 bytes into out."""
    cdef size_t outl
    if EVP_MAC_init(m, NULL, 0, NULL) != 1:
        return -1
    if EVP_MAC_update(m, a, <size_t>an) != 1:
        return -1
    if bn > 0 and EVP_MAC_update(m, b, <size_t>bn) != 1:
        return -1
    if EVP_MAC_final(m, out, &outl, HMAC_SHA1_LEN) != 1:
        return -1
    return 0


cdef inline int _gcm(
    EVP_CIPHER_CTX* c, int enc, const uint8_t* iv,
    const uint8_t* aad, Py_ssize_t aad_n, const uint8_t* aad2, Py_ssize_t aad2_n,
    uint8_t* p, Py_ssize_t n, uint8_t* tag,
) noexcept nogil:
    """AES-128-GCM in place over p[0:n]; seal writes the 16-byte tag, open checks it."""
    cdef int outl
    if EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, enc) != 1:
        return -1
    if aad_n > 0 and EVP_CipherUpdate(c, NULL, &outl, aad, <int>aad_n) != 1:
        return -1
    if aad2_n > 0 and EVP_CipherUpdate(c, NULL, &outl, aad2, <int>aad2_n) != 1:
        return -1
    if n > 0 and EVP_CipherUpdate(c, p, &outl, p, <int>n) != 1:
        return -1
    if enc:
        if EVP_CipherFinal_ex(c, p + n, &outl) != 1:
            return -1
        if EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1:
            return -1
        return 0
    if EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1:
        return -1
    return 0 if EVP_CipherFinal_ex(c, p + n, &outl) == 1 else 1


cdef inline void _rtp_iv(const srtp_session_t* s, const uint8_t* p, uint64_t index, uint8_t* iv) noexcept nogil:
    cdef int k
    cdef uint32_t roc
    if s.aead:  # RFC 7714 §8.1: salt ^ (0, 0, SSRC, ROC, SEQ)
        memcpy(iv, s.rtp.salt, 12)
        for k in range(4):
            iv[2 + k] ^= p[8 + k]
        roc = <uint32_t>(index >> 16)
        iv[6] ^= <uint8_t>(roc >> 24)
        iv[7] ^= <uint8_t>(roc >> 16)
        iv[8] ^= <uint8_t>(roc >> 8)
        iv[9] ^= <uint8_t>roc
        iv[10] ^= p[2]
        iv[11] ^= p[3]
    else:  # RFC 3711 §4.1.1: salt·2^16 ^ SSRC·2^64 ^ index·2^16
        memcpy(iv, s.rtp.salt, 16)
        for k in range(4):
            iv[4 + k] ^= p[8 + k]
        for k in range(6):
            iv[8 + k] ^= <uint8_t>(index >> (40 - 8 * k))


cdef inline void _rtcp_iv(const srtp_session_t* s, const uint8_t* p, uint32_t index, uint8_t* iv) noexcept nogil:
    cdef int k
    cdef int at = 8 if s.aead else 10  # GCM: salt ^ (0, SSRC, 0, index); CM: as RTP
    memcpy(iv, s.rtcp.salt, 16)
    for k in range(4):
        iv[(2 if s.aead else 4) + k] ^= p[4 + k]
    iv[at] ^= <uint8_t>(index >> 24)
    iv[at + 1] ^= <uint8_t>(index >> 16)
    iv[at + 2] ^= <uint8_t>(index >> 8)
    iv[at + 3] ^= <uint8_t>index


# ---------------------------------------------------------------------------------------------
# The four operations (declared in _srtp.pxd)

cdef Py_ssize_t srtp_protect_rtp(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity
) noexcept nogil:
    return srtp_protect_rtp_header(s, buf, length, capacity, _rtp_header_len(buf, length))


cdef Py_ssize_t srtp_protect_rtp_header(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity, Py_ssize_t header
) noexcept nogil:
    cdef Py_ssize_t n = length, tag_len = s.tag_len
    cdef srtp_stream_t* st
    cdef srtp_stream_t fresh
    cdef uint64_t index
    cdef int64_t delta
    cdef int verdict, rc
    cdef uint8_t iv[16]
    cdef uint8_t roc[4]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    if not s.outbound:
        return SRTP_ERR_DIRECTION
    if header < 0 or n > SRTP_MAX_PACKET:
        return _fail(s, SRTP_ERR_MALFORMED)
    if capacity < n + tag_len:
        return _fail(s, SRTP_ERR_NO_ROOM)
    st = _find(s, _be32(buf + 8))
    if st is NULL:
        memset(&fresh, 0, sizeof(fresh))
        st = _add(s, _be32(buf + 8), &fresh)
        if st is NULL:
            return _fail(s, SRTP_ERR_STREAMS)
    index = _estimate_index(st.rtp_index, (<int64_t>buf[2] << 8) | buf[3], &delta)
    verdict = _rtp_check(s, st, delta)
    if verdict == _TOO_OLD or (verdict == _SEEN and not s.allow_repeat):
        return _fail(s, SRTP_ERR_REPLAY)
    if verdict == _NEW:
        _rtp_add(st, delta)
    # _SEEN: a retransmission, protected again under the same index.
    _rtp_iv(s, buf, index, iv)
    if s.aead:
        rc = _gcm(s.rtp.cipher, 1, iv, buf, header, NULL, 0, buf + header, n - header, buf + n)
    else:
        rc = _ctr(s.rtp.cipher, iv, buf + header, n - header)
        if rc == 0:
            _put_be32(roc, <uint32_t>(index >> 16))
            rc = _hmac(s.rtp.mac, buf, n, roc, 4, mac)
            memcpy(buf + n, mac, tag_len)
    if rc != 0:
        return _fail(s, SRTP_ERR_CRYPTO)
    return n + tag_len


cdef Py_ssize_t srtp_unprotect_rtp(srtp_session_t* s, uint8_t* buf, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t header, n = length, tag_len = s.tag_len, end
    cdef srtp_stream_t* st
    cdef srtp_stream_t fresh
    cdef bint new_stream = False
    cdef uint64_t index
    cdef int64_t delta
    cdef int rc
    cdef uint8_t iv[16]
    cdef uint8_t roc[4]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    if s.outbound:
        return SRTP_ERR_DIRECTION
    header = _rtp_header_len(buf, n)
    if header < 0 or n > SRTP_MAX_PACKET:
        return _fail(s, SRTP_ERR_MALFORMED)
    st = _find(s, _be32(buf + 8))
    if st is NULL:
        if s.n_streams >= s.max_streams:
            return _fail(s, SRTP_ERR_STREAMS)
        memset(&fresh, 0, sizeof(fresh))
        st = &fresh
        new_stream = True
    index = _estimate_index(st.rtp_index, (<int64_t>buf[2] << 8) | buf[3], &delta)
    if _rtp_check(s, st, delta) != _NEW:
        return _fail(s, SRTP_ERR_REPLAY)
    if n < header + tag_len:  # checked after the replay check, as libsrtp does
        return _fail(s, SRTP_ERR_MALFORMED)
    end = n - tag_len
    _rtp_iv(s, buf, index, iv)
    if s.aead:
        rc = _gcm(s.rtp.cipher, 0, iv, buf, header, NULL, 0, buf + header, end - header, buf + end)
    else:
        _put_be32(roc, <uint32_t>(index >> 16))
        rc = _hmac(s.rtp.mac, buf, end, roc, 4, mac)
        if rc == 0:
            rc = 1 if CRYPTO_memcmp(mac, buf + end, tag_len) != 0 else 0
        if rc == 0:
            rc = _ctr(s.rtp.cipher, iv, buf + header, end - header)
    if rc == 1:
        return _fail(s, SRTP_ERR_AUTH)
    if rc != 0:
        return _fail(s, SRTP_ERR_CRYPTO)
    if new_stream:
        st = _add(s, _be32(buf + 8), &fresh)
        if st is NULL:  # out of memory
            return _fail(s, SRTP_ERR_STREAMS)
    _rtp_add(st, delta)
    return end


cdef Py_ssize_t srtp_protect_rtcp(
    srtp_session_t* s, uint8_t* buf, Py_ssize_t length, Py_ssize_t capacity
) noexcept nogil:
    cdef Py_ssize_t n = length, tag_len = s.tag_len
    cdef srtp_stream_t* st
    cdef srtp_stream_t fresh
    cdef uint32_t index
    cdef int rc
    cdef uint8_t iv[16]
    cdef uint8_t trailer[4]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    if not s.outbound:
        return SRTP_ERR_DIRECTION
    if n < 8 or n > SRTP_MAX_PACKET:
        return _fail(s, SRTP_ERR_MALFORMED)
    if capacity < n + 4 + tag_len:
        return _fail(s, SRTP_ERR_NO_ROOM)
    st = _find(s, _be32(buf + 4))
    if st is NULL:
        memset(&fresh, 0, sizeof(fresh))
        st = _add(s, _be32(buf + 4), &fresh)
        if st is NULL:
            return _fail(s, SRTP_ERR_STREAMS)
    if st.rtcp_index >= SRTCP_MAX_INDEX:
        return _fail(s, SRTP_ERR_REPLAY)  # index space used up: the keys must change
    st.rtcp_index += 1
    index = st.rtcp_index
    _put_be32(trailer, SRTCP_E | index)
    _rtcp_iv(s, buf, index, iv)
    if s.aead:
        rc = _gcm(s.rtcp.cipher, 1, iv, buf, 8, trailer, 4, buf + 8, n - 8, buf + n)
        memcpy(buf + n + tag_len, trailer, 4)
    else:
        rc = _ctr(s.rtcp.cipher, iv, buf + 8, n - 8)
        memcpy(buf + n, trailer, 4)
        if rc == 0:
            rc = _hmac(s.rtcp.mac, buf, n + 4, NULL, 0, mac)
            memcpy(buf + n + 4, mac, tag_len)
    if rc != 0:
        return _fail(s, SRTP_ERR_CRYPTO)
    return n + 4 + tag_len


cdef Py_ssize_t srtp_unprotect_rtcp(srtp_session_t* s, uint8_t* buf, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t n = length, tag_len = s.tag_len, end, at
    cdef srtp_stream_t* st
    cdef srtp_stream_t fresh
    cdef bint new_stream = False, encrypted
    cdef uint32_t word, index
    cdef int rc
    cdef uint8_t iv[16]
    cdef uint8_t mac[HMAC_SHA1_LEN]
    if s.outbound:
        return SRTP_ERR_DIRECTION
    if n < 8 + 4 + tag_len or n > SRTP_MAX_PACKET:
        return _fail(s, SRTP_ERR_MALFORMED)
    at = n - 4 if s.aead else n - tag_len - 4  # the E flag and index word
    word = _be32(buf + at)
    encrypted = (word & SRTCP_E) != 0
    if not encrypted and not s.aead:
        return _fail(s, SRTP_ERR_MALFORMED)  # as libsrtp: see _srtp_py._unprotect_rtcp
    index = word & SRTCP_MAX_INDEX
    st = _find(s, _be32(buf + 4))
    if st is NULL:
        if s.n_streams >= s.max_streams:
            return _fail(s, SRTP_ERR_STREAMS)
        memset(&fresh, 0, sizeof(fresh))
        st = &fresh
        new_stream = True
    if _rtcp_check(st, index) != _NEW:
        return _fail(s, SRTP_ERR_REPLAY)
    end = n - 4 - tag_len
    _rtcp_iv(s, buf, index, iv)
    if s.aead and encrypted:
        rc = _gcm(s.rtcp.cipher, 0, iv, buf, 8, buf + at, 4, buf + 8, end - 8, buf + end)
    elif s.aead:  # authenticated only: the whole packet, then E and index, as associated data
        rc = _gcm(s.rtcp.cipher, 0, iv, buf, end, buf + at, 4, buf + end, 0, buf + end)
    else:
        rc = _hmac(s.rtcp.mac, buf, n - tag_len, NULL, 0, mac)
        if rc == 0:
            rc = 1 if CRYPTO_memcmp(mac, buf + n - tag_len, tag_len) != 0 else 0
        if rc == 0:
            rc = _ctr(s.rtcp.cipher, iv, buf + 8, end - 8)
    if rc == 1:
        return _fail(s, SRTP_ERR_AUTH)
    if rc != 0:
        return _fail(s, SRTP_ERR_CRYPTO)
    if new_stream:
        st = _add(s, _be32(buf + 4), &fresh)
        if st is NULL:  # out of memory
            return _fail(s, SRTP_ERR_STREAMS)
    _rtcp_add(st, index)
    return end


# ---------------------------------------------------------------------------------------------
# Set-up (with the GIL)

cdef bytes _prf(const uint8_t* master_key, bytes master_salt, int label, Py_ssize_t length):
    """RFC 3711 §4.3.1 AES-CM PRF with kdr = 0 (see _srtp_py.derive_key)."""
    cdef uint8_t iv[16]
    cdef EVP_CIPHER_CTX* c
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    cdef int ok
    memset(iv, 0, 16)
    memcpy(iv, <const char*>master_salt, len(master_salt))
    iv[7] ^= <uint8_t>label
    memset(p, 0, length)
    c = EVP_CIPHER_CTX_new()
    if c is NULL:
        raise MemoryError()
    ok = EVP_CipherInit_ex(c, EVP_aes_128_ctr(), NULL, master_key, iv, 1) == 1
    if ok:
        ok = _ctr(c, iv, p, length) == 0
    EVP_CIPHER_CTX_free(c)
    if not ok:
        raise RuntimeError("libcrypto AES-CTR failed")
    return out


def derive_key(bytes master_key not None, bytes master_salt not None, int label, Py_ssize_t length):
    """RFC 3711 §4.3.1 AES-CM PRF with kdr = 0 (same contract as ``_srtp_py.derive_key``)."""
    if len(master_key) != 16:
        raise ValueError("master_key must be 16 bytes")
    if len(master_salt) not in (12, 14):
        raise ValueError("master_salt must be 12 or 14 bytes")
    if not 0 <= label <= 255:
        raise ValueError("label must be in [0, 255]")
    if not 0 <= length <= 256:
        raise ValueError("length must be in [0, 256]")
    return _prf(<const uint8_t*><const char*>master_key, master_salt, label, length)


cdef int _init_keys(srtp_keys_t* k, bint aead, bytes key, bytes salt, bytes auth_key) except -1:
    cdef EVP_MAC* hmac
    cdef OSSL_PARAM params[2]
    cdef char digest[5]
    k.cipher = EVP_CIPHER_CTX_new()
    if k.cipher is NULL:
        raise MemoryError()
    if EVP_CipherInit_ex(
        k.cipher, EVP_aes_128_gcm() if aead else EVP_aes_128_ctr(), NULL,
        <const uint8_t*><const char*>key, NULL, 1,
    ) != 1:
        raise RuntimeError("libcrypto cipher set-up failed")
    memset(k.salt, 0, 16)
    memcpy(k.salt, <const char*>salt, len(salt))
    if aead:
        return 0
    hmac = EVP_MAC_fetch(NULL, b"HMAC", NULL)
    if hmac is NULL:
        raise RuntimeError("libcrypto has no HMAC")
    k.mac = EVP_MAC_CTX_new(hmac)
    EVP_MAC_free(hmac)  # the context holds its own reference
    if k.mac is NULL:
        raise MemoryError()
    memcpy(digest, b"SHA1", 5)
    params[0] = OSSL_PARAM_construct_utf8_string(b"digest", digest, 0)
    params[1] = OSSL_PARAM_construct_end()
    if EVP_MAC_init(k.mac, <const uint8_t*><const char*>auth_key, len(auth_key), params) != 1:
        raise RuntimeError("libcrypto HMAC-SHA1 set-up failed")
    return 0


cdef void _free_keys(srtp_keys_t* k) noexcept:
    if k.cipher is not NULL:
        EVP_CIPHER_CTX_free(k.cipher)
        k.cipher = NULL
    if k.mac is not NULL:
        EVP_MAC_CTX_free(k.mac)
        k.mac = NULL
    memset(k.salt, 0, 16)


# Buffer formats accepted for batch lengths: native C int.
cdef inline bint _is_c_int(const char* fmt) noexcept:
    return fmt is not NULL and (strcmp(fmt, b"i") == 0 or strcmp(fmt, b"@i") == 0 or strcmp(fmt, b"=i") == 0)


cdef class SrtpContext:
    """One direction of SRTP/SRTCP for one DTLS-SRTP association (see ``_srtp_py``)."""

    def __cinit__(self):
        self.session = NULL
        self.busy = False

    def __init__(
        self,
        str profile,
        bytes master_key not None,
        bytes master_salt not None,
        *,
        bint outbound,
        int replay_window=128,
        Py_ssize_t max_streams=64,
        bint allow_repeat_tx=True,
    ):
        """Derive the six session keys from the master key and salt and set up the ciphers."""
        params = check_context_args(
            profile, master_key, master_salt, None, replay_window, max_streams
        )
        rtp = (
            derive_key(master_key, master_salt, 0, params.key_len),
            derive_key(master_key, master_salt, 2, params.salt_len),
            derive_key(master_key, master_salt, 1, params.auth_key_len),
        )
        rtcp = (
            derive_key(master_key, master_salt, 3, params.key_len),
            derive_key(master_key, master_salt, 5, params.salt_len),
            derive_key(master_key, master_salt, 4, params.auth_key_len),
        )
        self._setup(profile, rtp, rtcp, outbound, replay_window, max_streams, allow_repeat_tx)

    @classmethod
    def from_session_keys(
        cls,
        str profile,
        rtp,
        rtcp,
        *,
        bint outbound,
        int replay_window=128,
        Py_ssize_t max_streams=64,
        bint allow_repeat_tx=True,
    ):
        """A context from already derived (cipher key, salt, auth key) for RTP and RTCP."""
        cdef SrtpContext ctx = cls.__new__(cls)
        ctx._setup(
            profile, tuple(rtp), tuple(rtcp), outbound, replay_window, max_streams,
            allow_repeat_tx,
        )
        return ctx

    cdef _setup(
        self, str profile, tuple rtp, tuple rtcp, bint outbound, int replay_window,
        Py_ssize_t max_streams, bint allow_repeat_tx,
    ):
        cdef srtp_session_t* s
        params = check_context_args(profile, *rtp, replay_window, max_streams)
        check_context_args(profile, *rtcp, replay_window, max_streams)
        if self.session is not NULL:
            raise RuntimeError("SrtpContext is already set up")
        s = <srtp_session_t*>calloc(1, sizeof(srtp_session_t))
        if s is NULL:
            raise MemoryError()
        self.session = s
        s.aead = 1 if params.aead else 0
        s.tag_len = params.tag_len
        s.outbound = 1 if outbound else 0
        s.window = replay_window
        s.max_streams = max_streams
        s.allow_repeat = 1 if allow_repeat_tx else 0
        _init_keys(&s.rtp, params.aead, rtp[0], rtp[1], rtp[2])
        _init_keys(&s.rtcp, params.aead, rtcp[0], rtcp[1], rtcp[2])
        self.profile = profile
        self.outbound = outbound
        self.tag_len = params.tag_len

    def __dealloc__(self):
        cdef srtp_session_t* s = self.session
        if s is NULL:
            return
        _free_keys(&s.rtp)
        _free_keys(&s.rtcp)
        free(s.streams)
        free(s.ssrcs)
        free(s)
        self.session = NULL

    cdef srtp_session_t* _ready(self, bint outbound) except NULL:
        if self.session is NULL:
            raise RuntimeError("SrtpContext is not set up")
        if self.busy:
            raise RuntimeError("SrtpContext is in use by a batch on another thread")
        if self.outbound != outbound:
            raise RuntimeError(
                "protect needs an outbound SRTP context"
                if outbound
                else "unprotect needs an inbound SRTP context"
            )
        return self.session

    # -- introspection -------------------------------------------------------------------

    @property
    def stream_count(self):
        """SSRCs this context tracks."""
        return 0 if self.session is NULL else self.session.n_streams

    @property
    def failures(self):
        """Failed operations by reason since the context was made."""
        cdef srtp_session_t* s = self.session
        result = {reason: 0 for reason in REASONS.values()}
        if s is NULL:
            return result
        for code, reason in REASONS.items():
            result[reason] = s.failures[-code]
        result["malformed"] += s.failures[-SRTP_ERR_CRYPTO]
        return result

    def remove_stream(self, ssrc):
        """Forget an SSRC's state; True if it was tracked (see ``_srtp_py``)."""
        cdef srtp_session_t* s = self.session
        cdef srtp_stream_t* st
        cdef Py_ssize_t slot
        if s is NULL:
            return False
        if self.busy:
            raise RuntimeError("SrtpContext is in use by a batch on another thread")
        st = _find(s, <uint32_t>(ssrc & 0xFFFFFFFF))
        if st is NULL:
            return False
        slot = st - s.streams
        s.n_streams -= 1
        if slot != s.n_streams:
            memcpy(st, &s.streams[s.n_streams], sizeof(srtp_stream_t))
            s.ssrcs[slot] = s.ssrcs[s.n_streams]
        memset(&s.streams[s.n_streams], 0, sizeof(srtp_stream_t))
        s.last = 0
        return True

    # -- bytes in, bytes out -------------------------------------------------------------

    def protect_rtp(self, packet):
        """Encrypt and authenticate one RTP packet; SrtpError on failure."""
        cdef srtp_session_t* s = self._ready(True)
        cdef Py_buffer pb
        cdef Py_ssize_t n, result
        cdef bytes out
        cdef uint8_t* p
        PyObject_GetBuffer(packet, &pb, PyBUF_SIMPLE)
        try:
            n = pb.len
            out = PyBytes_FromStringAndSize(NULL, n + s.tag_len)
            p = <uint8_t*>PyBytes_AS_STRING(out)
            memcpy(p, pb.buf, n)
        finally:
            PyBuffer_Release(&pb)
        result = srtp_protect_rtp(s, p, n, n + s.tag_len)
        if result < 0:
            raise SrtpError(reason_for(result))
        return out

    def protect_rtcp(self, packet):
        """Encrypt and authenticate one (compound) RTCP packet; SrtpError on failure."""
        cdef srtp_session_t* s = self._ready(True)
        cdef Py_buffer pb
        cdef Py_ssize_t n, result
        cdef bytes out
        cdef uint8_t* p
        PyObject_GetBuffer(packet, &pb, PyBUF_SIMPLE)
        try:
            n = pb.len
            out = PyBytes_FromStringAndSize(NULL, n + 4 + s.tag_len)
            p = <uint8_t*>PyBytes_AS_STRING(out)
            memcpy(p, pb.buf, n)
        finally:
            PyBuffer_Release(&pb)
        result = srtp_protect_rtcp(s, p, n, n + 4 + s.tag_len)
        if result < 0:
            raise SrtpError(reason_for(result))
        return out

    def unprotect_rtp(self, packet):
        """Authenticate, replay-check and decrypt one SRTP packet; SrtpError on failure."""
        return self._unprotect(packet, False)

    def unprotect_rtcp(self, packet):
        """Authenticate, replay-check and decrypt one SRTCP packet; SrtpError on failure."""
        return self._unprotect(packet, True)

    cdef bytes _unprotect(self, object packet, bint rtcp):
        cdef srtp_session_t* s = self._ready(False)
        cdef Py_buffer pb
        cdef Py_ssize_t n, result
        cdef uint8_t stack[STACK_PACKET]
        cdef uint8_t* p = stack
        PyObject_GetBuffer(packet, &pb, PyBUF_SIMPLE)
        try:
            n = pb.len
            if n > STACK_PACKET:
                p = <uint8_t*>malloc(n)
                if p is NULL:
                    raise MemoryError()
            memcpy(p, pb.buf, n)
        finally:
            PyBuffer_Release(&pb)
        try:
            result = srtp_unprotect_rtcp(s, p, n) if rtcp else srtp_unprotect_rtp(s, p, n)
            if result < 0:
                raise SrtpError(reason_for(result))
            return PyBytes_FromStringAndSize(<char*>p, result)
        finally:
            if p is not stack:
                free(p)

    # -- in place, in batches ------------------------------------------------------------

    def protect_rtp_batch(self, buffer, lengths, Py_ssize_t stride):
        """Protect RTP packets in place in fixed-size slots (see ``_srtp_py``); GIL released."""
        self._ready(True)
        return self._batch(buffer, lengths, stride, True)

    def unprotect_rtp_batch(self, buffer, lengths, Py_ssize_t stride):
        """Unprotect SRTP packets in place in fixed-size slots (see ``_srtp_py``); GIL released."""
        self._ready(False)
        return self._batch(buffer, lengths, stride, False)

    cdef Py_ssize_t _batch(self, object buffer, object lengths, Py_ssize_t stride, bint protect) except -1:
        cdef srtp_session_t* s = self.session
        cdef Py_buffer bb
        cdef Py_buffer lb
        cdef Py_ssize_t count, i, done = 0, r
        cdef int* lens
        cdef uint8_t* data
        PyObject_GetBuffer(buffer, &bb, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            PyObject_GetBuffer(lengths, &lb, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND)
            try:
                if lb.itemsize != 4 or not _is_c_int(lb.format) or lb.ndim != 1:
                    raise ValueError("lengths must be a one-dimensional buffer of C ints")
                if stride <= 0:
                    raise ValueError("stride must be positive")
                count = lb.shape[0]
                if bb.len < count * stride:
                    raise ValueError("buffer is shorter than len(lengths) * stride")
                lens = <int*>lb.buf
                data = <uint8_t*>bb.buf
                for i in range(count):
                    if lens[i] > stride:
                        raise ValueError("a packet length exceeds the stride")
                self.busy = True
                try:
                    with nogil:
                        for i in range(count):
                            if lens[i] < 0:
                                continue
                            if protect:
                                r = srtp_protect_rtp(s, data + i * stride, lens[i], stride)
                            else:
                                r = srtp_unprotect_rtp(s, data + i * stride, lens[i])
                            lens[i] = <int>r
                            if r >= 0:
                                done += 1
                finally:
                    self.busy = False
            finally:
                PyBuffer_Release(&lb)
        finally:
            PyBuffer_Release(&bb)
        return done
