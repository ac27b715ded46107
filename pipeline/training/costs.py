"""What a training run costs besides its time, and why it takes that time: peak memory,
energy where a counter exists, the operations that fell back to the CPU, and a profiled
window of batches. Read between the timed epochs, never inside them, except the peak memory
of a device that keeps no peak (mps, a CPU without VmHWM): a background thread samples it
during the epochs, every SAMPLE_EVERY_S."""

import tempfile
import threading
from pathlib import Path

import psutil
import torch

from pipeline import schema
from pipeline.schema import Metrics, Tags
from pipeline.training import profiling

ENERGY_SOURCE = "NVML total energy counter, over the epochs (training and test passes)"


class Costs:
    """Opened before the first epoch; `pause` when an epoch ends, `resume` before the next
    starts, so that energy counts the epochs only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.memory = PeakMemory(device)
        self.counter = energy_counter(device)
        self.energy_j, self._mark = 0.0, None
        self.operations: list[dict] = []
        self.step = ""  # what the profiled window ran (profiling.describe_step)
        self.trace_path = Path(tempfile.mkdtemp(prefix="pipeline-trace-")) / "trace.json"

    def resume(self) -> None:
        self.memory.resume()
        if self.counter is not None:
            self._mark = self.counter()

    def pause(self) -> None:
        if self.counter is not None and self._mark is not None:
            self.energy_j += self.counter() - self._mark
            self._mark = None
        self.memory.pause()

    def profile(
        self,
        net,
        batches,
        lr: float,
        precision,
        num_batches: int,
        trace: Path | None,
        optimizing: dict | None = None,
        compile_mode: str = "none",
    ):
        """A window of `num_batches` training batches on a copy of the model, with the run's
        optimizer, eager (between two epochs: paused)."""
        if num_batches:
            self.operations = profiling.profile_window(
                net, batches, lr, self.device, precision, num_batches, trace, optimizing
            )
            self.step = profiling.describe_step(optimizing, compile_mode)

    def metrics(self, samples: int) -> dict[str, float]:
        """Peak memory; energy over the epochs where a counter exists, and `samples` (those
        the epochs' training and test passes processed: the same work) per joule."""
        found = self.memory.metrics()
        if self.counter is not None and self.energy_j > 0:
            found |= {
                Metrics.ENERGY_J: self.energy_j,
                Metrics.SAMPLES_PER_J: samples / self.energy_j,
            }
        if self.operations:
            found[Metrics.PROFILE_BATCHES] = self.operations[0]["batches"]
        return found

    def tags(self, fallbacks: set[str]) -> dict[str, str]:
        tags = {
            Tags.PEAK_MEMORY_SOURCE: self.memory.source,
            Tags.CPU_FALLBACKS: ", ".join(sorted(fallbacks)) or "none",
        }
        if self.counter is not None:
            tags[Tags.ENERGY_SOURCE] = ENERGY_SOURCE
        if self.operations:
            tags[Tags.PROFILE_NOTE] = profiling.NOTES.get(self.device.type, "")
            tags[Tags.PROFILE_STEP] = self.step
        return tags

    def log(self, run) -> None:
        """The operation table (shown as a table in the MLflow UI) and the trace, if any
        (a Chrome/Perfetto trace: chrome://tracing or ui.perfetto.dev)."""
        if self.operations:
            run.log_table(self.operations, "operations.json")
        folder = self.trace_path.parent
        if self.trace_path.exists():
            run.log_artifacts(folder)
        self.trace_path.unlink(missing_ok=True)
        folder.rmdir()


# --- peak memory ------------------------------------------------------------------------------

SAMPLE_EVERY_S = 0.05  # the background sampler's period, where nothing keeps a peak


class Sampler:
    """The largest of read()'s values, read every SAMPLE_EVERY_S in a background thread while
    started (and once more when stopped): the peak of a quantity that nothing keeps a peak of,
    during the epochs rather than after them, when their activations are freed."""

    def __init__(self, read):
        self.read, self.peak = read, 0
        self._stop, self._thread = threading.Event(), None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.peak = max(self.peak, self.read())

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak = max(self.peak, self.read())


class PeakMemory:
    """The peak memory of the timed epochs, labelled by what measures it: on CUDA the caching
    allocator's peak (max_memory_allocated and what it reserved), reset when each epoch starts
    and kept when it ends, so that neither compilation before the first epoch nor the
    profiled window between epochs counts; on mps current_allocated_memory (never the
    driver's pool) and on a CPU without VmHWM (macOS) the resident set, both sampled during
    the epochs; on Linux the process's peak resident set (VmHWM), the whole process's."""

    def __init__(self, device: torch.device):
        self.device, self.kept = device, (0, 0)
        self.sampler = None
        if device.type == "mps":
            self.sampler = Sampler(torch.mps.current_allocated_memory)
        elif device.type == "cpu" and vm_hwm() is None:
            self.sampler = Sampler(lambda: psutil.Process().memory_info().rss)

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return schema.MEMORY_CUDA
        if self.device.type == "mps":
            return schema.MEMORY_MPS
        return schema.MEMORY_RSS_SAMPLED if self.sampler is not None else schema.MEMORY_VMHWM

    def resume(self) -> None:
        """An epoch starts: on CUDA the allocator's peak starts again from here."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.sampler is not None:
            self.sampler.start()

    def pause(self) -> None:
        """An epoch ended: what it reached is kept before anything else (the profiled window)
        runs."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            self.kept = (max(self.kept[0], peak), max(self.kept[1], reserved))

    def metrics(self) -> dict[str, float]:
        mib = 1 << 20
        if self.device.type == "cuda":
            return {
                Metrics.PEAK_MEMORY_MB: self.kept[0] / mib,
                Metrics.RESERVED_MEMORY_MB: self.kept[1] / mib,
            }
        if self.sampler is not None:
            return {Metrics.PEAK_MEMORY_MB: self.sampler.peak / mib}
        return {Metrics.PEAK_MEMORY_MB: vm_hwm() / mib}


def vm_hwm() -> int | None:
    """The process's peak resident set in bytes (Linux: VmHWM); None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def energy_counter(device: torch.device):
    """A function reading the GPU's total-energy counter in joules (NVML), or None where no
    counter exists (the CPU, mps, a GPU or driver without it) or where it would count other
    work too (a GPU split into MIG instances: the counter is the whole GPU's): nothing is
    estimated."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = nvml_handle(pynvml, device)
        if _mig_enabled(pynvml, handle):
            return None
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules since the driver loaded
    except Exception:
        return None
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000


def nvml_handle(pynvml, device: torch.device):
    """NVML's handle for the GPU torch calls `device`, found by its UUID, else its PCI bus id:
    NVML numbers GPUs in PCI order over the whole machine, while CUDA numbers the ones that
    CUDA_VISIBLE_DEVICES leaves, fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    props = torch.cuda.get_device_properties(device)
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{props.uuid}")
    except Exception:
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)


def _mig_enabled(pynvml, handle) -> bool:
    """Whether the GPU runs MIG instances (a GPU without MIG answers NOT_SUPPORTED)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except Exception:
        return False
    return current == pynvml.NVML_DEVICE_MIG_ENABLE
