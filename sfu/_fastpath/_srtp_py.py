"""Pure-Python reference of the SRTP kernel (same contract as ``_srtp.pyx``).

SRTP and SRTCP (RFC 3711) for the two DTLS-SRTP profiles WebRTC uses:

* ``SRTP_AES128_CM_SHA1_80``: AES-128 in counter mode, HMAC-SHA1 tag truncated to 80 bits;
* ``SRTP_AEAD_AES_128_GCM``: AES-128-GCM with a 16-byte tag (RFC 7714).

The cryptography comes from the ``cryptography`` package (OpenSSL underneath); this module only
does the framing around it, exactly as libsrtp 2 does, so that packets are byte-identical:

* session keys from the master key and salt with the AES-CM PRF, key derivation rate 0
  (RFC 3711 §4.3); a 12-byte GCM master salt is padded with two zero bytes first;
* the packet index: a rollover counter (ROC) per SSRC estimated from the highest index seen
  (RFC 3711 §3.3.1 and Appendix A, with libsrtp's rule that the ROC stays 0 until the highest
  index passes 0x8000);
* the IV: AES-CM ``salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16`` (§4.1.1); GCM ``salt ⊕ (0, SSRC, ROC,
  SEQ)`` for RTP and ``salt ⊕ (0, SSRC, 0, SRTCP index)`` for RTCP (RFC 7714 §8.1, §9.1);
* what is authenticated: for AES-CM the packet then the ROC (RTP) or the packet then the
  E flag and SRTCP index (RTCP); for GCM the RTP header with CSRCs and extension block, or the
  8-byte RTCP header then the E flag and index, as associated data;
* replay protection: a sliding window per SSRC (``replay_window`` packets, 64..1024) for RTP
  and libsrtp's 128-index window for SRTCP; the SRTCP index a sender writes counts from 1.

A context is one direction of one DTLS-SRTP association. An ``outbound`` context protects and,
with ``allow_repeat_tx`` (the default), lets a sequence number be protected again (a
retransmission; libsrtp's ``allow_repeat_tx``) unless it fell out of the window; re-protect only
byte-identical packets, since GCM under a repeated index reuses its nonce (RFC 7714 §8.1).
An inbound context unprotects and refuses replays. Streams (one per SSRC) are created on the
first packet protected, or the first packet that authenticates, up to ``max_streams``; the
compiled kernel's tables grow with the SSRCs actually seen.

Every operation exists in place on a buffer, returning the new length or a negative code
(``_srtp_shared.ERR_*``), and as a bytes-to-bytes call that raises ``SrtpError`` with the
code's reason. Failures are counted by reason (``failures``).
"""

from __future__ import annotations

import hmac as _hmac
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC

from sfu._fastpath._srtp_shared import (
    ERR_AUTH,
    ERR_MALFORMED,
    ERR_NO_ROOM,
    ERR_REPLAY,
    ERR_STREAMS,
    MAX_PACKET,
    REASONS,
    SrtpError,
    check_context_args,
    reason_for,
)

__all__ = ["SrtpContext", "SrtpError", "derive_key"]

Buffer = bytes | bytearray | memoryview

# RFC 3711 §4.3.1 key derivation labels.
_LABEL_RTP_KEY, _LABEL_RTP_AUTH, _LABEL_RTP_SALT = 0, 1, 2
_LABEL_RTCP_KEY, _LABEL_RTCP_AUTH, _LABEL_RTCP_SALT = 3, 4, 5

_SRTCP_E = 0x80000000
_SRTCP_MAX_INDEX = 0x7FFFFFFF
_RTCP_WINDOW = 128  # libsrtp's fixed SRTCP replay window

# Replay check verdicts.
_NEW, _SEEN, _TOO_OLD = 0, 1, 2


def derive_key(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 AES-CM PRF with kdr = 0: ``length`` bytes of session key for ``label``.

    ``master_salt`` is 14 bytes, or 12 (GCM, RFC 7714 §11), padded on the right with zeros.
    """
    if len(master_key) != 16:
        raise ValueError("master_key must be 16 bytes")
    if len(master_salt) not in (12, 14):
        raise ValueError("master_salt must be 12 or 14 bytes")
    if not 0 <= label <= 255:
        raise ValueError("label must be in [0, 255]")
    if not 0 <= length <= 256:
        raise ValueError("length must be in [0, 256]")
    x = bytearray(master_salt.ljust(14, b"\0"))
    x[7] ^= label  # key_id = label || r (r = 0 with kdr = 0), right-aligned against the salt
    encryptor = Cipher(algorithms.AES(master_key), modes.CTR(bytes(x) + b"\0\0")).encryptor()
    return encryptor.update(bytes(length)) + encryptor.finalize()


def _rtp_header_len(m: memoryview, n: int) -> int:
    """Length of the RTP header with CSRCs and extension block, or -1 (libsrtp's checks)."""
    if n < 12:
        return -1
    b0 = m[0]
    header = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < header + 4:
            return -1
        header += 4 + 4 * ((m[header + 2] << 8) | m[header + 3])
    return header if n >= header else -1


def _estimate_index(highest: int, seq: int) -> tuple[int, int]:
    """(48-bit packet index, its distance from ``highest``) for sequence number ``seq``.

    RFC 3711 Appendix A, as libsrtp's ``srtp_rdbx_estimate_index``: the ROC is taken as 0
    while the highest index is at most 0x8000.
    """
    if highest <= 0x8000:
        return seq, seq - highest
    local_roc = (highest >> 16) & 0xFFFFFFFF
    local_seq = highest & 0xFFFF
    if local_seq < 0x8000:
        if seq - local_seq > 0x8000:
            roc, delta = local_roc - 1, seq - local_seq - 0x10000
        else:
            roc, delta = local_roc, seq - local_seq
    elif local_seq - 0x8000 > seq:
        roc, delta = local_roc + 1, seq - local_seq + 0x10000
    else:
        roc, delta = local_roc, seq - local_seq
    return ((roc & 0xFFFFFFFF) << 16) | seq, delta


class _Stream:
    """Per-SSRC state. RTP: highest index and a bitmask (bit k = index ``rtp_index - k``).

    SRTCP: an outbound stream keeps the last index it wrote; an inbound one keeps libsrtp's
    window start and a 128-bit mask (bit k = index ``rtcp_index + k``).
    """

    __slots__ = ("rtcp_index", "rtcp_mask", "rtp_index", "rtp_mask")

    def __init__(self) -> None:
        self.rtp_index = 0
        self.rtp_mask = 0
        self.rtcp_index = 0
        self.rtcp_mask = 0


class _Keys:
    """Session keys of RTP or RTCP, with the cipher objects built once."""

    __slots__ = ("cipher", "gcm", "mac", "salt")

    def __init__(self, aead: bool, key: bytes, salt: bytes, auth_key: bytes) -> None:
        self.salt = salt
        self.cipher = algorithms.AES(key)
        self.gcm = AESGCM(key) if aead else None
        self.mac = None if aead else HMAC(auth_key, hashes.SHA1())

    def rtp_iv(self, ssrc: bytes, index: int) -> bytes:
        """GCM: salt ⊕ (0, SSRC, ROC, SEQ) (RFC 7714 §8.1).

        AES-CM: salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16 (RFC 3711 §4.1.1).
        """
        if self.gcm is not None:
            return _xor(self.salt, b"\0\0" + ssrc + index.to_bytes(6, "big"))
        return _xor(self.salt + b"\0\0", bytes(4) + ssrc + index.to_bytes(6, "big") + b"\0\0")

    def rtcp_iv(self, ssrc: bytes, index: int) -> bytes:
        """RFC 7714 §9.1 salt ⊕ (0, SSRC, 0, SRTCP index); AES-CM as RTP with the SRTCP index."""
        if self.gcm is not None:
            return _xor(self.salt, b"\0\0" + ssrc + b"\0\0" + index.to_bytes(4, "big"))
        return _xor(self.salt + b"\0\0", bytes(4) + ssrc + index.to_bytes(6, "big") + b"\0\0")

    def ctr(self, iv: bytes, data: bytes) -> bytes:
        encryptor = Cipher(self.cipher, modes.CTR(iv)).encryptor()
        return encryptor.update(data) + encryptor.finalize()

    def tag(self, *parts: bytes | memoryview) -> bytes:
        assert self.mac is not None
        mac = self.mac.copy()
        for part in parts:
            mac.update(part)
        return mac.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class SrtpContext:
    """One direction of SRTP/SRTCP for one DTLS-SRTP association (see the module docstring)."""

    __slots__ = (
        "_aead",
        "_allow_repeat",
        "_failures",
        "_max_streams",
        "_rtcp",
        "_rtp",
        "_streams",
        "_window",
        "outbound",
        "profile",
        "tag_len",
    )

    profile: str
    outbound: bool
    tag_len: int

    def __init__(
        self,
        profile: str,
        master_key: bytes,
        master_salt: bytes,
        *,
        outbound: bool,
        replay_window: int = 128,
        max_streams: int = 64,
        allow_repeat_tx: bool = True,
    ) -> None:
        """Derive the six session keys from the master key and salt and set up the ciphers."""
        params = check_context_args(
            profile, master_key, master_salt, None, replay_window, max_streams
        )
        rtp = (
            derive_key(master_key, master_salt, _LABEL_RTP_KEY, params.key_len),
            derive_key(master_key, master_salt, _LABEL_RTP_SALT, params.salt_len),
            derive_key(master_key, master_salt, _LABEL_RTP_AUTH, params.auth_key_len),
        )
        rtcp = (
            derive_key(master_key, master_salt, _LABEL_RTCP_KEY, params.key_len),
            derive_key(master_key, master_salt, _LABEL_RTCP_SALT, params.salt_len),
            derive_key(master_key, master_salt, _LABEL_RTCP_AUTH, params.auth_key_len),
        )
        self._setup(profile, rtp, rtcp, outbound, replay_window, max_streams, allow_repeat_tx)

    @classmethod
    def from_session_keys(
        cls,
        profile: str,
        rtp: tuple[bytes, bytes, bytes],
        rtcp: tuple[bytes, bytes, bytes],
        *,
        outbound: bool,
        replay_window: int = 128,
        max_streams: int = 64,
        allow_repeat_tx: bool = True,
    ) -> Self:
        """A context from already derived (cipher key, salt, auth key) for RTP and RTCP.

        For test vectors stated in session keys (RFC 7714 §16, §17); the auth key is b"" for GCM.
        """
        self = cls.__new__(cls)
        self._setup(profile, rtp, rtcp, outbound, replay_window, max_streams, allow_repeat_tx)
        return self

    def _setup(
        self,
        profile: str,
        rtp: tuple[bytes, bytes, bytes],
        rtcp: tuple[bytes, bytes, bytes],
        outbound: bool,
        replay_window: int,
        max_streams: int,
        allow_repeat_tx: bool,
    ) -> None:
        params = check_context_args(profile, *rtp, replay_window, max_streams)
        check_context_args(profile, *rtcp, replay_window, max_streams)
        self.profile = profile
        self.outbound = bool(outbound)
        self.tag_len = params.tag_len
        self._aead = params.aead
        self._rtp = _Keys(params.aead, *rtp)
        self._rtcp = _Keys(params.aead, *rtcp)
        self._window = replay_window
        self._max_streams = max_streams
        self._allow_repeat = bool(allow_repeat_tx)
        self._streams: dict[int, _Stream] = {}
        self._failures = dict.fromkeys(REASONS, 0)

    # -- introspection -------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        """SSRCs this context tracks."""
        return len(self._streams)

    @property
    def failures(self) -> dict[str, int]:
        """Failed operations by reason since the context was made."""
        return {REASONS[code]: count for code, count in self._failures.items()}

    def remove_stream(self, ssrc: int) -> bool:
        """Forget an SSRC's state; True if it was tracked.

        Only for SSRCs that will not come back under the same keys: a stream made again starts
        from ROC 0, which on an outbound context would repeat packet indexes.
        """
        return self._streams.pop(ssrc & 0xFFFFFFFF, None) is not None

    # -- bytes in, bytes out -------------------------------------------------------------

    def protect_rtp(self, packet: Buffer) -> bytes:
        """Encrypt and authenticate one RTP packet; SrtpError on failure."""
        self._require(outbound=True)
        buf = bytearray(packet)
        n = len(buf)
        buf += bytes(self.tag_len)
        return self._result(buf, self._protect_rtp(memoryview(buf), n, len(buf)))

    def unprotect_rtp(self, packet: Buffer) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet; SrtpError on failure."""
        self._require(outbound=False)
        buf = bytearray(packet)
        return self._result(buf, self._unprotect_rtp(memoryview(buf), len(buf)))

    def protect_rtcp(self, packet: Buffer) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet; SrtpError on failure."""
        self._require(outbound=True)
        buf = bytearray(packet)
        n = len(buf)
        buf += bytes(4 + self.tag_len)
        return self._result(buf, self._protect_rtcp(memoryview(buf), n, len(buf)))

    def unprotect_rtcp(self, packet: Buffer) -> bytes:
        """Authenticate, replay-check and decrypt one SRTCP packet; SrtpError on failure."""
        self._require(outbound=False)
        buf = bytearray(packet)
        return self._result(buf, self._unprotect_rtcp(memoryview(buf), len(buf)))

    # -- in place, in batches ------------------------------------------------------------

    def protect_rtp_batch(self, buffer: Buffer, lengths: Buffer, stride: int) -> int:
        """Protect RTP packets in place in fixed-size slots of one buffer.

        Slot ``i`` is ``buffer[i * stride:(i + 1) * stride]``; ``lengths`` is a writable buffer
        of C ints (``array('i')``, numpy ``int32``), one per slot, holding each packet's length.
        Each length is replaced by the new length or a negative code (``ERR_*``); slots whose
        length is already negative are skipped. Returns how many packets succeeded.
        """
        self._require(outbound=True)
        return self._batch(buffer, lengths, stride, protect=True)

    def unprotect_rtp_batch(self, buffer: Buffer, lengths: Buffer, stride: int) -> int:
        """Unprotect SRTP packets in place in fixed-size slots (see ``protect_rtp_batch``).

        A slot that fails holds unspecified bytes after its header.
        """
        self._require(outbound=False)
        return self._batch(buffer, lengths, stride, protect=False)

    def _batch(self, buffer: Buffer, lengths: Buffer, stride: int, *, protect: bool) -> int:
        data = memoryview(buffer)
        if data.readonly:
            raise BufferError("buffer is not writable")
        data = data.cast("B")
        lv = memoryview(lengths)
        if lv.readonly:
            raise BufferError("lengths is not writable")
        if lv.itemsize != 4 or lv.format not in ("i", "@i", "=i") or lv.ndim != 1:
            raise ValueError("lengths must be a one-dimensional buffer of C ints")
        if stride <= 0:
            raise ValueError("stride must be positive")
        count = len(lv)
        if len(data) < count * stride:
            raise ValueError("buffer is shorter than len(lengths) * stride")
        if any(length > stride for length in lv):
            raise ValueError("a packet length exceeds the stride")
        done = 0
        for i in range(count):
            n = lv[i]
            if n < 0:
                continue
            slot = data[i * stride : (i + 1) * stride]
            r = self._protect_rtp(slot, n, stride) if protect else self._unprotect_rtp(slot, n)
            lv[i] = r
            done += r >= 0
        return done

    # -- the operations ------------------------------------------------------------------

    def _protect_rtp(self, m: memoryview, n: int, cap: int) -> int:
        header = _rtp_header_len(m, n)
        if header < 0 or n > MAX_PACKET:
            return self._fail(ERR_MALFORMED)
        tag_len = self.tag_len
        if cap < n + tag_len:
            return self._fail(ERR_NO_ROOM)
        ssrc = int.from_bytes(m[8:12], "big")
        stream = self._streams.get(ssrc)
        if stream is None:
            if len(self._streams) >= self._max_streams:
                return self._fail(ERR_STREAMS)
            stream = self._streams[ssrc] = _Stream()
        seq = (m[2] << 8) | m[3]
        index, delta = _estimate_index(stream.rtp_index, seq)
        verdict = self._rtp_check(stream, delta)
        if verdict == _TOO_OLD or (verdict == _SEEN and not self._allow_repeat):
            return self._fail(ERR_REPLAY)
        if verdict == _NEW:
            self._rtp_add(stream, delta)
        # _SEEN: a retransmission, protected again under the same index.
        keys = self._rtp
        roc = (index >> 16).to_bytes(4, "big")
        if keys.gcm is not None:
            iv = keys.rtp_iv(bytes(m[8:12]), index)
            m[header : n + tag_len] = keys.gcm.encrypt(iv, bytes(m[header:n]), bytes(m[:header]))
        else:
            iv = keys.rtp_iv(bytes(m[8:12]), index)
            m[header:n] = keys.ctr(iv, bytes(m[header:n]))
            m[n : n + tag_len] = keys.tag(m[:n], roc)[:tag_len]
        return n + tag_len

    def _unprotect_rtp(self, m: memoryview, n: int) -> int:
        tag_len = self.tag_len
        header = _rtp_header_len(m, n)
        if header < 0 or n > MAX_PACKET:
            return self._fail(ERR_MALFORMED)
        ssrc = int.from_bytes(m[8:12], "big")
        stream = self._streams.get(ssrc)
        new_stream = stream is None
        if stream is None:
            if len(self._streams) >= self._max_streams:
                return self._fail(ERR_STREAMS)
            stream = _Stream()
        seq = (m[2] << 8) | m[3]
        index, delta = _estimate_index(stream.rtp_index, seq)
        if self._rtp_check(stream, delta) != _NEW:
            return self._fail(ERR_REPLAY)
        if n < header + tag_len:  # checked after the replay check, as libsrtp does
            return self._fail(ERR_MALFORMED)
        keys = self._rtp
        roc = (index >> 16).to_bytes(4, "big")
        end = n - tag_len
        if keys.gcm is not None:
            iv = keys.rtp_iv(bytes(m[8:12]), index)
            try:
                plain = keys.gcm.decrypt(iv, bytes(m[header:n]), bytes(m[:header]))
            except InvalidTag:
                return self._fail(ERR_AUTH)
            m[header:end] = plain
        else:
            expected = keys.tag(m[:end], roc)[:tag_len]
            if not _hmac.compare_digest(expected, bytes(m[end:n])):
                return self._fail(ERR_AUTH)
            iv = keys.rtp_iv(bytes(m[8:12]), index)
            m[header:end] = keys.ctr(iv, bytes(m[header:end]))
        if new_stream:
            self._streams[ssrc] = stream
        self._rtp_add(stream, delta)
        return end

    def _protect_rtcp(self, m: memoryview, n: int, cap: int) -> int:
        if n < 8 or n > MAX_PACKET:
            return self._fail(ERR_MALFORMED)
        tag_len = self.tag_len
        if cap < n + 4 + tag_len:
            return self._fail(ERR_NO_ROOM)
        ssrc = int.from_bytes(m[4:8], "big")
        stream = self._streams.get(ssrc)
        if stream is None:
            if len(self._streams) >= self._max_streams:
                return self._fail(ERR_STREAMS)
            stream = self._streams[ssrc] = _Stream()
        if stream.rtcp_index >= _SRTCP_MAX_INDEX:
            return self._fail(ERR_REPLAY)  # index space used up: the keys must change
        stream.rtcp_index += 1
        index = stream.rtcp_index
        trailer = (_SRTCP_E | index).to_bytes(4, "big")
        keys = self._rtcp
        if keys.gcm is not None:
            iv = keys.rtcp_iv(bytes(m[4:8]), index)
            sealed = keys.gcm.encrypt(iv, bytes(m[8:n]), bytes(m[:8]) + trailer)
            m[8 : n + tag_len] = sealed
            m[n + tag_len : n + tag_len + 4] = trailer
        else:
            iv = keys.rtcp_iv(bytes(m[4:8]), index)
            m[8:n] = keys.ctr(iv, bytes(m[8:n]))
            m[n : n + 4] = trailer
            m[n + 4 : n + 4 + tag_len] = keys.tag(m[: n + 4])[:tag_len]
        return n + 4 + tag_len

    def _unprotect_rtcp(self, m: memoryview, n: int) -> int:
        tag_len = self.tag_len
        if n < 8 + 4 + tag_len or n > MAX_PACKET:
            return self._fail(ERR_MALFORMED)
        keys = self._rtcp
        at = n - 4 if keys.gcm is not None else n - tag_len - 4  # the E flag and index word
        word = int.from_bytes(m[at : at + 4], "big")
        encrypted = bool(word & _SRTCP_E)
        if not encrypted and keys.gcm is None:
            # Unencrypted SRTCP: libsrtp refuses it from an encrypting AES-CM policy ("cannot
            # check"); with GCM it authenticates the whole packet instead (RFC 7714 §9.3).
            return self._fail(ERR_MALFORMED)
        index = word & _SRTCP_MAX_INDEX
        ssrc = int.from_bytes(m[4:8], "big")
        stream = self._streams.get(ssrc)
        new_stream = stream is None
        if stream is None:
            if len(self._streams) >= self._max_streams:
                return self._fail(ERR_STREAMS)
            stream = _Stream()
        if self._rtcp_check(stream, index) != _NEW:
            return self._fail(ERR_REPLAY)
        end = n - 4 - tag_len
        if keys.gcm is not None:
            iv = keys.rtcp_iv(bytes(m[4:8]), index)
            # Associated data: the header (or, unencrypted, the whole packet), then E and index.
            aad = bytes(m[: 8 if encrypted else end]) + bytes(m[at:n])
            sealed = bytes(m[8 : n - 4]) if encrypted else bytes(m[end : n - 4])
            try:
                plain = keys.gcm.decrypt(iv, sealed, aad)
            except InvalidTag:
                return self._fail(ERR_AUTH)
            if encrypted:
                m[8:end] = plain
        else:
            expected = keys.tag(m[: n - tag_len])[:tag_len]
            if not _hmac.compare_digest(expected, bytes(m[n - tag_len : n])):
                return self._fail(ERR_AUTH)
            iv = keys.rtcp_iv(bytes(m[4:8]), index)
            m[8:end] = keys.ctr(iv, bytes(m[8:end]))
        if new_stream:
            self._streams[ssrc] = stream
        self._rtcp_add(stream, index)
        return end

    # -- replay windows ------------------------------------------------------------------

    def _rtp_check(self, stream: _Stream, delta: int) -> int:
        if delta > 0:
            return _NEW
        if -delta >= self._window:
            return _TOO_OLD
        return _SEEN if (stream.rtp_mask >> -delta) & 1 else _NEW

    def _rtp_add(self, stream: _Stream, delta: int) -> None:
        if delta > 0:
            stream.rtp_index += delta
            stream.rtp_mask = ((stream.rtp_mask << delta) | 1) & ((1 << self._window) - 1)
        else:
            stream.rtp_mask |= 1 << -delta

    @staticmethod
    def _rtcp_check(stream: _Stream, index: int) -> int:
        start = stream.rtcp_index
        if index >= start + _RTCP_WINDOW:
            return _NEW
        if index < start:
            return _TOO_OLD
        return _SEEN if (stream.rtcp_mask >> (index - start)) & 1 else _NEW

    @staticmethod
    def _rtcp_add(stream: _Stream, index: int) -> None:
        offset = index - stream.rtcp_index
        if offset >= _RTCP_WINDOW:
            shift = offset - (_RTCP_WINDOW - 1)
            stream.rtcp_mask >>= shift
            stream.rtcp_index += shift
            offset = _RTCP_WINDOW - 1
        stream.rtcp_mask |= 1 << offset

    # -- helpers -------------------------------------------------------------------------

    def _require(self, *, outbound: bool) -> None:
        if self.outbound != outbound:
            raise RuntimeError(
                "protect needs an outbound SRTP context"
                if outbound
                else "unprotect needs an inbound SRTP context"
            )

    def _fail(self, code: int) -> int:
        self._failures[code] += 1
        return code

    @staticmethod
    def _result(buf: bytearray, result: int) -> bytes:
        if result < 0:
            raise SrtpError(reason_for(result))
        return bytes(buf[:result])
