# The compiled selector has exactly the reference's Python contract (see sfu/core/layers.py); the
# differential tests prove it. Typing it as the reference's class lets code use either one.
from sfu.core.layers import SimulcastSelector as SimulcastSelector

__all__ = ["SimulcastSelector"]
