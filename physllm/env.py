"""The machine a run is on: device choice and description, mixed precision, CPU
threads, and the process's peak memory. Plain torch; no physllm layer above errors."""

from __future__ import annotations

import contextlib
import os
import platform
import resource

import torch

from physllm.errors import PhysllmError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU) or a torch device name that is present here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PhysllmError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhysllmError("device 'cuda' asked for, but no CUDA GPU is available")
    return device


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor``
    says only ``x86_64``), or the architecture where none is found."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return f"{value.strip()}, {platform.machine()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    """``cuda (GPU name)`` or ``cpu (processor, cores, threads)``: what reports print. Two
    CPU boxes of one architecture can differ several-fold in speed: the model name says which."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 leaves torch's default."""
    if threads:
        torch.set_num_threads(threads)


def autocast_context(
    device: torch.device, dtype: str
) -> tuple[contextlib.AbstractContextManager, bool]:
    """(autocast context, whether fp16 needs a GradScaler). Mixed precision on CUDA only."""
    if device.type != "cuda" or dtype == "float32":
        return contextlib.nullcontext(), False
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return torch.autocast(device_type="cuda", dtype=torch_dtype), torch_dtype is torch.float16


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): Linux's VmHWM, which, unlike
    ``ru_maxrss``, does not inherit the peak of the process that spawned us."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Linux: restart the peak-RSS watermark (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated tensor memory. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


__all__ = [
    "autocast_context",
    "device_description",
    "peak_memory_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "resolve_device",
    "set_threads",
]
