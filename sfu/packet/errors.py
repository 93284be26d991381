"""The single error type raised by every wire-format parser."""


class ParseError(ValueError):
    """Raised by any parser in :mod:`sfu.packet` or :mod:`sfu.codecs` on malformed input.

    Parsers raise this and nothing else, so a datagram handler can drop and count a bad
    packet with one ``except ParseError`` without masking programming errors.
    """
