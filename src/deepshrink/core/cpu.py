"""What this machine's CPU is and can do, read once from ``/proc/cpuinfo`` (Linux; elsewhere nothing is known).

Speed-ups and even int8 results depend on it (VNNI, AVX512-BF16, AMX): the latency tables print it, bfloat16
training warns without it, int8 keeps weights to 7 bits where the kernels saturate."""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=1)
def cpuinfo() -> tuple[str | None, frozenset[str]] | None:
    """``(model name or None, the first processor's flags)``; None where ``/proc/cpuinfo`` cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    model = re.search(r"model name\s*:\s*(.+)", text)
    flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else None), frozenset(flags.group(1).split() if flags else ())


def cpu_flags() -> frozenset[str]:
    """This CPU's flags (``avx2``, ``avx512_vnni``...); empty where they cannot be read."""
    info = cpuinfo()
    return info[1] if info is not None else frozenset()
