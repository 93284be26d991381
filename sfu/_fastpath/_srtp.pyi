# The compiled SRTP kernel has exactly the reference's Python contract (see _srtp_py.py); the
# tests prove it. Typing it as the reference's class lets code use either one interchangeably.
from sfu._fastpath._srtp_py import SrtpContext as SrtpContext
from sfu._fastpath._srtp_py import derive_key as derive_key

__all__ = ["SrtpContext", "derive_key"]
