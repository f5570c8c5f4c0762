"""sleap-rtc: remote GPU training for SLEAP over WebRTC.

``sleap_rtc.core`` holds everything shared (asyncio only); ``server``, ``worker``,
``client`` and ``gui`` are thin runtimes on it.
"""

__version__ = "0.1.0"
