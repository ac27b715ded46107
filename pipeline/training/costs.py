"""What a training run costs besides its time, and why it takes that time: peak memory,
energy where a counter exists, the operations that fell back to the CPU, and a profiled
window of batches. Measured between the timed epochs, never inside them."""

import tempfile
from pathlib import Path

import torch

from pipeline import devices
from pipeline.schema import Metrics, Tags
from pipeline.training import profiling

ENERGY_SOURCE = "NVML total energy counter, over the epochs (training and test passes)"


class Costs:
    """Opened before the first epoch; `pause` when an epoch ends, `resume` before the next
    starts, so that energy counts the epochs only."""

    def __init__(self, device: torch.device):
        self.device = device
        self.memory = devices.PeakMemory(device)
        self.counter = energy_counter(device)
        self.energy_j, self._mark = 0.0, None
        self.operations: list[dict] = []
        self.trace_path = Path(tempfile.mkdtemp(prefix="pipeline-trace-")) / "trace.json"

    def resume(self) -> None:
        if self.counter is not None:
            self._mark = self.counter()

    def pause(self) -> None:
        if self.counter is not None and self._mark is not None:
            self.energy_j += self.counter() - self._mark
            self._mark = None
        self.memory.sample()

    def profile(self, net, batches, lr: float, precision, num_batches: int, trace: Path | None):
        """A window of `num_batches` training batches on a copy of the model (between two
        epochs: paused)."""
        if num_batches:
            self.operations = profiling.profile_window(
                net, batches, lr, self.device, precision, num_batches, trace
            )

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


def energy_counter(device: torch.device):
    """A function reading the GPU's total-energy counter in joules (NVML), or None where no
    counter exists (the CPU, mps, a GPU or driver without it): nothing is estimated."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = nvml_handle(pynvml, device)
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
