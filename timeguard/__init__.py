"""timeguard: a host-level time-integrity agent.

It cross-checks the system clock against NTP servers and HTTPS ``Date`` headers, detects and records
clock jumps, and calls hooks that alert and repair what a wrong clock broke. It never sets the clock.
"""

__version__ = "0.1.0"
