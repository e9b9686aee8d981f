#!/usr/bin/env python3
"""Which parts of a running program's executable are resident, and why.

    scripts/resident-code.py PID [TOP]

Reads /proc/PID/maps and /proc/PID/pagemap (root: the present bit needs
no more, but is only reliable for the process's own owner or root), and
attributes every resident page of the executable to ELF sections and, for
code, to the crates whose functions lie in it (by `nm` symbols and sizes,
shared in proportion when a page holds several). A page is resident when
the program touched it or when the kernel's fault-around mapped it next to
one it did: the figures say where the resident code lies, not what ran.

Prints MB per section and the TOP (default 20) crates by resident code.
"""

import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def exe_mappings(pid):
    exe = os.readlink(f"/proc/{pid}/exe")
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi, parts[1], int(parts[2], 16)))
    return exe, maps


def present_pages(pid, lo, hi):
    """Start addresses of the present pages in [lo, hi)."""
    pages = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(lo // PAGE * 8)
        data = f.read((hi - lo) // PAGE * 8)
    for i in range(len(data) // 8):
        (entry,) = struct.unpack_from("<Q", data, i * 8)
        if entry >> 63 & 1:
            pages.append(lo + i * PAGE)
    return pages


def sections(exe):
    """(name, vaddr, size) of the allocated sections."""
    out = subprocess.run(["readelf", "-SW", exe], capture_output=True, text=True, check=True).stdout
    found = []
    for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]{16})\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", out):
        name, addr, size, flags = m.group(1), int(m.group(2), 16), int(m.group(3), 16), m.group(4)
        if "A" in flags and size and addr:
            found.append((name, addr, size))
    return found


def crate_of(name):
    name = name.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        return m.group(1)
    return "(C or runtime: " + name.split("(")[0][:24] + ")" if name else "(no name)"


def symbols(exe):
    out = subprocess.run(
        ["nm", "-C", "--defined-only", "-S", "--numeric-sort", exe],
        capture_output=True, text=True, check=True,
    ).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            syms.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return syms


def main():
    pid = int(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    exe, maps = exe_mappings(pid)
    if not maps:
        sys.exit(f"no mapping of the executable in /proc/{pid}/maps")
    # A PIE's first mapping is file offset 0 at link address 0.
    base = min(lo - off for lo, _, _, off in maps)
    resident = []
    for lo, hi, _, _ in maps:
        resident += [p - base for p in present_pages(pid, lo, hi)]
    resident.sort()
    total = len(resident) * PAGE
    print(f"{exe}: {total / 1e6:.1f} MB of the executable resident ({len(resident)} pages)")

    by_section = collections.Counter()
    secs = sections(exe)
    for p in resident:
        for name, addr, size in secs:
            overlap = min(p + PAGE, addr + size) - max(p, addr)
            if overlap > 0:
                by_section[name] += overlap
    for name, addr, size in secs:
        if by_section[name] >= 0.05e6:
            print(f"  {name:<20} {by_section[name] / 1e6:6.1f} MB resident of {size / 1e6:6.1f} MB")

    syms = symbols(exe)
    by_crate = collections.Counter()
    j = 0
    for p in resident:
        while j < len(syms) and syms[j][0] + syms[j][1] <= p:
            j += 1
        k = j
        while k < len(syms) and syms[k][0] < p + PAGE:
            addr, size, name = syms[k]
            overlap = min(p + PAGE, addr + size) - max(p, addr)
            if overlap > 0:
                by_crate[crate_of(name)] += overlap
            k += 1
    print(f"  code by crate (top {top}):")
    for crate, size in by_crate.most_common(top):
        print(f"    {crate:<40} {size / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
