"""Network addresses: which hosts are this machine."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """localhost or a loopback IP (127.0.0.0/8, ::1); a name that needs DNS is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
