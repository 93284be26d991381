# The compiled SVC selector has exactly the reference's Python contract (see sfu/core/svc.py); the
# differential tests prove it. Typing it as the reference's class lets code use either one.
from sfu.core.svc import SvcSelector as SvcSelector

__all__ = ["SvcSelector"]
