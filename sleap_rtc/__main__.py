"""``python -m sleap_rtc`` is the ``sleap-rtc`` command."""

from sleap_rtc.cli import main

if __name__ == "__main__":
    main()
