"""Train one PyTorch workload on each device, track it in MLflow, flag slow or wrong devices."""

__version__ = "0.1.0"
