"""Codec payload descriptors (VP8, VP9, H.264, AV1 dependency descriptor); no media libraries."""
