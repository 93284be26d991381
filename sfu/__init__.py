"""A selective forwarding unit (SFU) for WebRTC: Python control plane, Cython data plane."""

__version__ = "0.1.0"
