# cython: language_level=3
# One parse of an untrusted RTP packet's header (RFC 3550 §5.1, §5.3.1; RFC 8285 elements) into
# a struct that every kernel on the forwarding path reads instead of deriving the header length
# again (the forwarder parses at ingest; the munger's rewrite, the extension-id rewrite, the VP8
# descriptor and the SRTP protect of each egress copy take their offsets from it):
#
#     from sfu._fastpath._rtp cimport rtp_view_t, rtp_parse, rtp_ext_find, RTP_OK
#
#     cdef rtp_view_t v
#     with nogil:
#         if rtp_parse(&v, pkt, n, twcc_id, level_id) != RTP_OK: ...   # F_HEADER_BAD
#         if rtp_ext_find(&v, &v.twcc) < 0: ...                        # F_MALFORMED_EXT
#
# The contract is the reference's, ``sfu.packet.rtp``: a bad fixed header is where
# ``peek_rtp_header`` answers None; ``payload_offset`` is -1 where ``payload_offset`` raises;
# ``rtp_ext_find`` answers what ``find_extension`` answers for that id (or -1 where it raises);
# ``ext_bad`` is set where ``parse_rtp`` raises for the extension block. Nothing is validated
# beyond that (the padding count in particular is read, not checked: see ``padding_ok``),
# except in ``defect``: the data plane's admission check, ``sfu.packet.rtp.rtp_defect``.
# The rewritten copy of a packet keeps the header's layout, so a view of the ingress packet
# describes every egress copy made from it.
#
# The compiled ``parse_rtp`` (``_rtp.pyx``) builds the reference's RtpView from this parse, so
# the differential tests hold it to ``sfu.packet.rtp.parse_rtp``.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    RTP_OK = 0
    RTP_HEADER_BAD = -1         # shorter than the fixed header, or version != 2
    RTP_ONE_BYTE_PROFILE = 0xBEDE
    RTP_ONE_BYTE_STOP_ID = 15   # RFC 8285 §4.2: ends the processing of the whole block
    # ``rtp_view_t.defect``: sfu.packet.rtp.RTP_DEFECT_* (the first check that fails)
    RTP_DEFECT_NONE = 0
    RTP_DEFECT_HEADER = 1
    RTP_DEFECT_CSRC = 2
    RTP_DEFECT_EXT_BLOCK = 3
    RTP_DEFECT_EXT_PROFILE = 4
    RTP_DEFECT_EXT_ELEMENT = 5
    RTP_DEFECT_PADDING = 6
    RTP_DEFECT_NO_PAYLOAD = 7


cdef struct rtp_elem_t:
    int id                      # the element wanted (<= 0: none)
    Py_ssize_t pos              # offset of the first such element's value; -1 when absent
    Py_ssize_t len              # its length


cdef struct rtp_view_t:
    Py_ssize_t size             # the packet's length
    bint marker
    int payload_type
    uint16_t seq
    uint32_t timestamp
    uint32_t ssrc
    int csrc_count
    bint has_ext                # the X bit
    int ext_profile             # 'defined by profile' (0xBEDE, 0x100X or anything else)
    Py_ssize_t ext_start        # the block body (after its 4-byte header)...
    Py_ssize_t ext_end          # ...up to here; both 0 without a (well-framed) block
    bint ext_bad                # the block overruns the packet or an element is malformed
    Py_ssize_t payload_offset   # after CSRCs and block; -1 where payload_offset() raises
    int padding                 # the padding count octet (P bit set), else 0; not checked
    bint padding_ok             # P clear, or a count of 1.. that fits after the header
    Py_ssize_t payload_end      # size - padding, never below 0 (<= payload_offset: no payload)
    rtp_elem_t twcc             # transport-wide CC sequence number element
    rtp_elem_t level            # audio level element (RFC 6464)
    int defect                  # RTP_DEFECT_*: what ``sfu.packet.rtp.rtp_defect`` answers


cdef inline int rtp_ext_next(const uint8_t* p, int profile, Py_ssize_t* pos, Py_ssize_t end,
                             int* ext_id, Py_ssize_t* vpos, Py_ssize_t* vlen) noexcept nogil:
    """The next RFC 8285 element of the block body ``p[*pos:end]``: 1 (id and value in the
    out-parameters, ``*pos`` moved past it), 0 at the end of usable data, -1 malformed.

    Padding octets (0) are skipped. In the one-byte form (§4.2) id 15 ends the block and an
    id of 0 with a non-zero length is taken as its end too (as libwebrtc does); the two-byte
    form (§4.3) has no stop id. A profile that is neither form has no elements."""
    cdef Py_ssize_t i = pos[0], stop
    cdef int b
    if profile == RTP_ONE_BYTE_PROFILE:
        while i < end:
            b = p[i]
            if b == 0:
                i += 1
                continue
            if (b >> 4) == RTP_ONE_BYTE_STOP_ID or (b >> 4) == 0:
                pos[0] = end
                return 0
            stop = i + 2 + (b & 0x0F)  # the length field is the value's length minus one
            if stop > end:
                pos[0] = i
                return -1
            ext_id[0] = b >> 4
            vpos[0] = i + 1
            vlen[0] = stop - i - 1
            pos[0] = stop
            return 1
    elif (profile >> 4) == 0x100:  # 0x1000-0x100F: the low 4 bits are 'appbits'
        while i < end:
            b = p[i]
            if b == 0:
                i += 1
                continue
            if i + 1 >= end:
                pos[0] = i
                return -1
            stop = i + 2 + p[i + 1]
            if stop > end:
                pos[0] = i
                return -1
            ext_id[0] = b
            vpos[0] = i + 2
            vlen[0] = stop - i - 2
            pos[0] = stop
            return 1
    pos[0] = end
    return 0


cdef inline int rtp_parse(rtp_view_t* v, const uint8_t* p, Py_ssize_t n, int twcc_id,
                          int level_id) noexcept nogil:
    """Parse ``p[:n]`` into ``v``, locating the elements ``twcc_id`` and ``level_id`` (<= 0:
    not wanted). RTP_OK, or RTP_HEADER_BAD: then ``payload_offset`` is -1, and the fixed
    fields (marker to ssrc) are set only if ``n`` >= 12 (the version was not 2)."""
    cdef Py_ssize_t offset, pos, vpos = 0, vlen = 0
    cdef int r, ext_id = 0
    v.size = n
    v.payload_offset = -1
    v.padding_ok = False
    v.defect = RTP_DEFECT_HEADER
    if n < 12:
        return RTP_HEADER_BAD
    v.marker = (p[1] & 0x80) != 0
    v.payload_type = p[1] & 0x7F
    v.seq = <uint16_t>((p[2] << 8) | p[3])
    v.timestamp = ((<uint32_t>p[4] << 24) | (<uint32_t>p[5] << 16)
                   | (<uint32_t>p[6] << 8) | p[7])
    v.ssrc = ((<uint32_t>p[8] << 24) | (<uint32_t>p[9] << 16)
              | (<uint32_t>p[10] << 8) | p[11])
    if (p[0] >> 6) != 2:
        return RTP_HEADER_BAD  # the fixed fields above are read all the same (the munger's)
    v.csrc_count = p[0] & 0x0F
    v.has_ext = (p[0] & 0x10) != 0
    v.ext_profile = 0
    v.ext_start = 0
    v.ext_end = 0
    v.ext_bad = False
    v.twcc.id = twcc_id
    v.twcc.pos = -1
    v.twcc.len = 0
    v.level.id = level_id
    v.level.pos = -1
    v.level.len = 0
    v.defect = RTP_DEFECT_NONE
    offset = 12 + 4 * v.csrc_count
    if v.has_ext:
        # RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the body.
        if offset + 4 > n:
            v.ext_bad = True
            v.defect = RTP_DEFECT_CSRC if offset > n else RTP_DEFECT_EXT_BLOCK
            offset = -1
        else:
            v.ext_profile = (p[offset] << 8) | p[offset + 1]
            v.ext_start = offset + 4
            v.ext_end = v.ext_start + 4 * ((<Py_ssize_t>p[offset + 2] << 8) | p[offset + 3])
            if v.ext_end > n:
                v.ext_bad = True
                v.defect = RTP_DEFECT_EXT_BLOCK
                v.ext_start = v.ext_end = 0
                offset = -1
            else:
                offset = v.ext_end
                # One walk over the whole block: the first element of each wanted id, and
                # whether any element is malformed (find_extension raises for every id it
                # has not found before that element; parse_rtp raises).
                pos = v.ext_start
                while True:
                    r = rtp_ext_next(p, v.ext_profile, &pos, v.ext_end, &ext_id, &vpos, &vlen)
                    if r <= 0:
                        v.ext_bad = r < 0
                        if r < 0:
                            v.defect = RTP_DEFECT_EXT_ELEMENT
                        elif v.ext_profile != RTP_ONE_BYTE_PROFILE and (v.ext_profile >> 4) != 0x100:
                            v.defect = RTP_DEFECT_EXT_PROFILE
                        break
                    if ext_id == twcc_id and v.twcc.pos < 0:
                        v.twcc.pos = vpos
                        v.twcc.len = vlen
                    if ext_id == level_id and v.level.pos < 0:
                        v.level.pos = vpos
                        v.level.len = vlen
    elif offset > n:
        offset = -1  # the CSRC list overruns the packet
        v.defect = RTP_DEFECT_CSRC
    v.payload_offset = offset
    # RFC 3550 §5.1: with P set the last octet counts the padding octets, itself included.
    v.padding = p[n - 1] if p[0] & 0x20 else 0
    v.padding_ok = not (p[0] & 0x20) or (
        offset >= 0 and v.padding != 0 and offset + v.padding <= n
    )
    v.payload_end = n - v.padding if n > v.padding else 0
    if v.defect == RTP_DEFECT_NONE:
        if p[0] & 0x20:
            if not v.padding_ok:
                v.defect = RTP_DEFECT_PADDING
        elif offset == n:
            v.defect = RTP_DEFECT_NO_PAYLOAD
    return RTP_OK


cdef inline int rtp_ext_find(const rtp_view_t* v, const rtp_elem_t* e) noexcept nogil:
    """``find_extension`` for a wanted element of a parsed (RTP_OK) view: 1 found (``e.pos``,
    ``e.len``), 0 absent, -1 where it raises (a malformed block, or a malformed element met
    before the first element of that id)."""
    if e.id <= 0:
        return 0
    if e.pos >= 0:
        return 1
    return -1 if v.ext_bad else 0


cdef inline bint rtp_rewritable(const rtp_view_t* v) noexcept nogil:
    """The framing the header rewrite requires (``rewrite_rtp``'s MALFORMED otherwise): the
    CSRCs and extension block fit, and a padding count of 1.. fits after them."""
    return v.payload_offset >= 0 and v.padding_ok
