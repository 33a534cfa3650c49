"""Apple Silicon machines: unified memory, published memory bandwidth, and how much of it the GPU may wire.

Bandwidths are Apple's published figures (REFERENCES.md); this is the one table, `bench` reads it too
(roofline.CHIP_BANDWIDTH_GBPS). M3 Max's 400 GB/s and M4 Max's 546 GB/s are the top (16-core CPU) bins, the
ones sold with 48 GB or more.

macOS caps the memory the GPU can wire (Metal's `recommendedMaxWorkingSetSize`): about 3/4 of RAM on
machines with more than 36 GB and about 2/3 below. A model whose weights and cache exceed the cap pages or
fails to allocate. The cap can be raised until the next reboot with

    sudo sysctl iogpu.wired_limit_mb=<MB>          (macOS 14+; `debug.iogpu.wired_limit` before)

leaving a few GB for macOS itself; `RAISED_LIMIT_RESERVE` is the margin `estimate` assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

GIB = 1 << 30
RAISED_LIMIT_RESERVE = 8 * GIB  # left to macOS and other apps when iogpu.wired_limit_mb is raised


@dataclass(frozen=True)
class Machine:
    name: str
    chip: str
    ram_gb: int  # Apple's "GB" of unified memory are GiB
    bandwidth_gbs: float  # 1e9 bytes/s

    @property
    def ram_bytes(self) -> int:
        return self.ram_gb * GIB

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def wired_limit_bytes(self) -> int:
        """The GPU wired-memory cap macOS applies by default."""
        frac = 3 / 4 if self.ram_gb > 36 else 2 / 3
        return int(self.ram_bytes * frac)

    @property
    def raised_limit_bytes(self) -> int:
        """The cap after `sudo sysctl iogpu.wired_limit_mb=...`, leaving RAISED_LIMIT_RESERVE to macOS."""
        return self.ram_bytes - RAISED_LIMIT_RESERVE


_CHIPS = {  # chip: (published GB/s, unified-memory configurations in GB)
    "M3 Ultra": (819, (512, 256, 96)),
    "M2 Ultra": (800, (192, 128, 64)),
    "M1 Ultra": (800, (128, 64)),
    "M4 Max": (546, (128, 64, 48)),
    "M3 Max": (400, (128, 64, 48)),
    "M4 Pro": (273, (64, 48, 24)),
    "M4": (120, (32, 24, 16)),
}

MACHINES: dict[str, Machine] = {
    name: Machine(name, chip, ram, bw)
    for chip, (bw, rams) in _CHIPS.items()
    for ram in rams
    for name in [f"{chip.lower().replace(' ', '-')}-{ram}"]
}


def machine(name: str) -> Machine:
    """Look up a machine by name (e.g. "m3-ultra-512"); the error lists the known names."""
    if name not in MACHINES:
        raise ConfigError(f"--machine {name!r}: unknown machine; choose one of {', '.join(MACHINES)}")
    return MACHINES[name]
