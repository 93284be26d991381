"""Sans-I/O WebRTC transport: ICE-lite, DTLS-SRTP, SRTP."""
