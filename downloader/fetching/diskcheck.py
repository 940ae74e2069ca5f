"""Disk-full protection: downloads pause above a high watermark of used space, resume at the low.

The state machine is pure (`DiskMonitor.observe`) so it is tested without a full disk;
`usage_percent` reads the real filesystem like the original (root-reserved blocks free).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def usage_percent(path: Path) -> float:
    st = os.statvfs(path)
    if st.f_blocks == 0:
        return 0.0
    return float(int((st.f_blocks - st.f_bfree) * 100 / st.f_blocks))


@dataclasses.dataclass
class DiskMonitor:
    high_percent: float
    low_percent: float
    healthy: bool = True

    def observe(self, used_percent: float) -> bool | None:
        """Feed one reading; returns the new health when it changed, else None."""
        if self.healthy and used_percent > self.high_percent:
            self.healthy = False
            return False
        if not self.healthy and used_percent <= self.low_percent:
            self.healthy = True
            return True
        return None
