"""Peak training memory: CUDA allocator peaks, or the process's peak resident set on CPU."""

from __future__ import annotations

import resource
import sys

import torch

GB = 1024**3


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


class PeakMemory:
    """Reset on construction; `read()` gives the peak since then.

    CUDA: `max_memory_allocated` (and reserved) in GB, as the paper's column.
    CPU: the process's peak resident set (ru_maxrss) minus its resident set when measuring
    starts (before the model is built), so weights, activations and optimizer state count and
    the Python/torch runtime does not. ru_maxrss cannot be reset, so only the first
    measurement of a process is valid; later ones (jobs of an in-process sweep) read None.
    `mode=memory` therefore measures in a fresh subprocess.
    """

    _cpu_used = False  # a process's ru_maxrss serves one measurement

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = current_rss_bytes()
        self.valid = device.type == "cuda" or not PeakMemory._cpu_used
        PeakMemory._cpu_used |= device.type == "cpu"
        if device.type == "cuda":  # per process; an earlier job's cached blocks are released first
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict[str, float | str]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {
                "peak_memory_gb": torch.cuda.max_memory_allocated(self.device) / GB,
                "peak_memory_reserved_gb": torch.cuda.max_memory_reserved(self.device) / GB,
                "peak_memory_kind": "cuda_max_allocated",
                "device_name": torch.cuda.get_device_name(self.device),
            }
        return {
            "peak_memory_gb": (_max_rss_bytes() - self.baseline) / GB if self.valid else None,
            "peak_memory_kind": "cpu_peak_rss_minus_baseline" if self.valid else "cpu_not_first_job_of_process",
        }


def current_rss_bytes() -> int:
    """The resident set now (Linux /proc; elsewhere the peak so far as an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return _max_rss_bytes()
