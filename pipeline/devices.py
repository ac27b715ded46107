"""Everything device-specific lives here: which devices exist, their names, synchronisation,
precisions, and how the host allocator treats freed memory."""

import contextlib
import ctypes
import os
import platform
import re
import subprocess
import warnings
from pathlib import Path

import torch

from pipeline import console
from pipeline.errors import UserError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
AUTO_ORDER = ("cuda:0", "mps", "cpu")  # what --device auto tries, in order

# glibc's mallopt parameters (malloc.h) and the values the training process sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD, MMAP_THRESHOLD = 256 << 20, 32 << 20
ALLOCATOR_KEEPS_FREED, ALLOCATOR_DEFAULT = "glibc, freed memory kept", "system default"


def keep_freed_host_memory() -> str:
    """Have the C allocator keep freed host memory for reuse; return what it does now.

    Every batch frees and allocates the same few megabytes of host memory (activations,
    gradients, the batch itself). glibc gives free memory at the top of its heap back to the
    system once more than M_TRIM_THRESHOLD is free, and serves blocks over M_MMAP_THRESHOLD
    with fresh mappings; by default both thresholds move with what the process has freed so
    far, so whether an epoch takes 100,000 page faults or none depends on the heap's history,
    that is on what else the process imported. Fixed thresholds (trim at 256 MiB, mappings
    from 32 MiB, glibc's largest) make the reuse certain: the epoch's time is the work's, not
    the allocator's luck. Elsewhere than glibc nothing changes. The answer is the run's tag
    pipeline.host_allocator.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: macOS, Windows, musl
        return ALLOCATOR_DEFAULT
    kept = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return ALLOCATOR_KEEPS_FREED if kept else ALLOCATOR_DEFAULT


def available() -> list[str]:
    """The devices this machine has, as strings torch.device accepts."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve(spec: str) -> torch.device:
    """Turn a user's device string into a device this machine has, or raise UserError."""
    spec = spec.strip().lower()
    have = available()
    listed = ", ".join(have)
    if spec == "auto":
        return auto_choice(have)[0]
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(
            f"unknown device '{spec}' (expected {DEVICE_CHOICES}); this machine has: {listed}"
        ) from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda:0")
    if device.type == "mps" and device.index == 0:  # torch's name for the one Apple GPU
        device = torch.device("mps")
    if device.type not in ("cpu", "cuda", "mps") or (device.type == "cpu" and device.index):
        raise UserError(
            f"unsupported device '{spec}' (expected {DEVICE_CHOICES}); this machine has: {listed}"
        )
    name = "cpu" if device.type == "cpu" else str(device)
    if name not in have:
        raise UserError(f"device '{spec}' is not available here; this machine has: {listed}")
    device = torch.device(name)
    why = unusable(device)
    if why:
        raise UserError(f"device '{name}' is listed but unusable: {why}")
    return device


def auto_choice(have: list[str]) -> tuple[torch.device, str]:
    """`--device auto`: the first usable of cuda:0, mps, cpu among the devices this machine
    `have`s, and why that one. A listed one that fails says so on stderr, and is passed over."""
    for kind in [d for d in AUTO_ORDER[:-1] if d in have]:
        why = unusable(torch.device(kind))
        if why is None:
            passed = "no usable cuda; " if kind == "mps" else ""
            return torch.device(kind), f"auto: {passed}first usable of {', '.join(AUTO_ORDER)}"
        console.err.print(f"auto: {kind} is listed but unusable ({why}); not using it")
    return torch.device("cpu"), "auto: no usable cuda or mps"


def choose(spec: str) -> tuple[torch.device, str]:
    """resolve(spec), and the line train prints before its first epoch: the device, its model
    and, for `auto`, what it chose and why ('device: cpu AMD EPYC 7B13 (auto: no usable cuda
    or mps)')."""
    if spec.strip().lower() == "auto":
        device, why = auto_choice(available())
        return device, f"device: {device} {name(device)} ({why})"
    device = resolve(spec)
    return device, f"device: {device} {name(device)}"


def unusable(device: torch.device) -> str | None:
    """Why a listed device cannot run work, or None: a small allocation and one operation,
    checked. GitHub's hosted macOS runners list `mps`, then fail the first allocation
    (actions/runner-images#9918); so does a CUDA device whose driver is broken."""
    try:
        total = float((torch.ones(256, device=device) * 2).sum())  # read back: waits for it
    except Exception as e:  # whatever the back end raises: RuntimeError, torch.OutOfMemoryError
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None if total == 512.0 else f"a test operation gave {total} instead of 512"


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on the device, so that a clock read afterwards is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def name(device: torch.device) -> str:
    """The GPU, SoC or CPU model behind a device: an Apple GPU by torch's own name for it and
    its core count ("Apple M1 (8 GPU cores)": M1s come with 7 or 8)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        mps = torch.backends.mps
        if hasattr(mps, "get_name"):
            cores = f" ({mps.get_core_count()} GPU cores)" if hasattr(mps, "get_core_count") else ""
            return f"{mps.get_name()}{cores}"
    return cpu_name()


def cudnn_version(device: torch.device) -> str | None:
    """cuDNN's version for a cuda device; None elsewhere."""
    if device.type != "cuda" or not torch.backends.cudnn.is_available():
        return None
    return str(torch.backends.cudnn.version())


def driver_version(device: torch.device) -> str | None:
    """The NVIDIA driver's version for a cuda device (through nvidia-ml-py); None elsewhere."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:  # no NVML: a ROCm build, or a driver without it
        return None


def cpu_name() -> str:
    if platform.system() == "Darwin":  # on Apple silicon this names the SoC, e.g. "Apple M1"
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def build_info() -> dict[str, str]:
    """What the installed torch was built with."""
    return {
        "torch": torch.__version__,
        "cuda_built": torch.version.cuda or "no",
        "cuda_available": str(torch.cuda.is_available()).lower(),
        "mps_built": str(torch.backends.mps.is_built()).lower(),
        "mps_available": str(torch.backends.mps.is_available()).lower(),
    }


def describe() -> list[tuple[str, str, str]]:
    """(device, name, "usable" or why not) for every device this machine lists."""
    found = []
    for d in available():
        why = unusable(torch.device(d))
        called = "-" if why else name(torch.device(d))  # a broken driver may not name it
        found.append((d, called, f"unusable: {why}" if why else "usable"))
    return found


# --- precision -------------------------------------------------------------------------------

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """How a device computes: fp32; tf32 (CUDA's TensorFloat-32 matmuls and convolutions);
    bf16 or fp16 through autocast on the device (fp16 with a gradient scaler)."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """The context the forward pass and the loss run in: autocast for bf16 and fp16."""
        if self.name in AUTOCAST:
            return torch.autocast(self.device.type, dtype=AUTOCAST[self.name])
        return contextlib.nullcontext()

    @property
    def fp32_math(self) -> str:
        """How fp32 matmuls and convolutions run: `tf32` for tf32, else `ieee`."""
        return "tf32" if self.name == "tf32" else "ieee"

    def apply(self) -> dict[str, str]:
        """Set the fp32 math of this process once for the run (forward and backward alike)
        and return the settings in effect, read back through torch."""
        set_fp32_math(self.fp32_math)
        return fp32_settings()

    def context(self):
        """The context a whole step runs in on this device: fp32 matmuls and convolutions
        as IEEE fp32 (or TF32 for tf32), and autocast for bf16 and fp16."""
        stack = contextlib.ExitStack()
        stack.enter_context(fp32_math(self.fp32_math))
        if self.name in AUTOCAST:
            stack.enter_context(torch.autocast(self.device.type, dtype=AUTOCAST[self.name]))
        return stack

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimizer step (scaled for fp16), then zero the gradients."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        optimizer.zero_grad()


# Variables that make cuBLAS run fp32 matmuls as TF32 whatever torch's settings say.
TF32_OVERRIDES = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")


def set_fp32_math(mode: str) -> None:
    """fp32 matmuls and cuDNN convolutions as `ieee` or `tf32`, through torch's one API for
    it (fp32_precision; the older allow_tf32 flags are never touched, as mixing the two
    raises)."""
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


def fp32_settings() -> dict[str, str]:
    """The fp32 math in effect: matmul and convolution precision, and any override variable."""
    overrides = [f"{k}={os.environ[k]}" for k in TF32_OVERRIDES if os.environ.get(k)]
    return {
        "matmul": torch.backends.cuda.matmul.fp32_precision,
        "conv": torch.backends.cudnn.conv.fp32_precision,
        "override": ",".join(overrides) or "none",
    }


@contextlib.contextmanager
def fp32_math(mode: str):
    """set_fp32_math for the duration, restored afterwards (doctor's checks)."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    set_fp32_math(mode)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def set_deterministic(on: bool) -> None:
    """cuDNN's deterministic kernels and no autotuning (slower on some convolutions), and
    torch's deterministic algorithms where they exist (warning where they do not)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def precision(name: str, device: torch.device) -> Precision:
    """The precision on the device, or UserError when the device cannot do it."""
    if name not in PRECISIONS:
        raise UserError(f"unknown precision '{name}' (expected {', '.join(PRECISIONS)})")
    why = None
    if name == "tf32" and (
        device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0)
    ):
        why = "TF32 needs a CUDA GPU of compute capability 8.0 or later"
    elif name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        why = "this GPU has no bfloat16"
    elif name in AUTOCAST:
        try:
            with torch.autocast(device.type, dtype=AUTOCAST[name]):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        except (RuntimeError, TypeError) as e:
            why = str(e).strip().splitlines()[0]
    if why:
        raise UserError(f"precision {name} is not available on {device}: {why}")
    return Precision(name, device)


# --- what a run costs besides time: CPU fallbacks (the rest: training/costs.py) -------------

# The back ends' fallback warnings: MPS "The operator 'aten::x' is not currently supported on
# the MPS backend and will fall back to run on the CPU", DirectML's alike, XPU's "... is
# falling back to run on the CPU".
FALLBACK = re.compile(r"operator '?(aten::[\w.]+)'?.*?fall(?:s|ing)? back to run on the CPU", re.S)


@contextlib.contextmanager
def fallbacks_recorded():
    """Record every operation a back end runs on the CPU instead, for the duration: yields the
    set of their names. torch warns once per process (TORCH_WARN_ONCE); warn-always and a
    filter for the fallback text catch each, from every call site; each is printed once."""
    found: set[str] = set()
    saved_show, saved_always = warnings.showwarning, torch.is_warn_always_enabled()

    def show(message, category, filename, lineno, file=None, line=None):
        match = FALLBACK.search(str(message))
        if match is None:
            return saved_show(message, category, filename, lineno, file, line)
        if match.group(1) not in found:
            found.add(match.group(1))
            saved_show(message, category, filename, lineno, file, line)
        return None

    torch.set_warn_always(True)
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=r".*fall(s|ing)? back to run on the CPU")
        warnings.showwarning = show
        try:
            yield found
        finally:
            warnings.showwarning = saved_show
            torch.set_warn_always(saved_always)
