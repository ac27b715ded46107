"""Where each accelerator starts to beat the CPU: a sweep's children's records (plain data)
made into one row per workload with each device's figures, and the crossovers."""

import statistics

CELL_MEASURES = ("samples_per_s", "peak_memory_mb", "energy_j")
# A row's data set, optimizer and compile mode, and their values in records that lack them.
SETUP = {"dataset": "", "optimizer": "sgd", "compile": "none"}


def family(row: dict) -> tuple:
    """What a crossover is found within: model, precision, data set, optimizer, compile mode."""
    return (row["model"], row["precision"], *(row[k] for k in SETUP))


def crossover_table(records: list[dict]) -> dict:
    """Plain data in (one record a child: its workload, device, samples/s, forward FLOPs per
    sample and, where measured, peak memory and energy), plain data out: a row per workload,
    ordered by FLOPs per batch within each model and precision, with each device's samples/s,
    peak MiB (and how it was measured: its short method) and joules (the median of a cell's
    repeats, and how many ran) and speed-up over the CPU; and for each accelerator, model and
    precision, the smallest workload at which it beats the CPU."""
    rows: dict[tuple, dict] = {}
    for r in records:
        setup = {k: r.get(k, default) for k, default in SETUP.items()}
        key = (r["model"], r["precision"], *setup.values(), r["hidden"], r["batch_size"])
        row = rows.setdefault(
            key,
            {
                "model": r["model"],
                "precision": r["precision"],
                **setup,
                "hidden": r["hidden"],
                "batch_size": r["batch_size"],
                "flops_per_batch": r["flops_per_sample"] * r["batch_size"],
                **{key: {} for key in CELL_MEASURES},
                "memory_method": {},
            },
        )
        if r.get("peak_memory_mb") is not None:
            row["memory_method"][r["device"]] = r.get("memory_method", "unlabelled")
        for key in CELL_MEASURES:
            if r.get(key) is not None:
                row[key].setdefault(r["device"], []).append(r[key])
    for row in rows.values():  # a cell's repeats: their median
        row["runs"] = {d: len(v) for d, v in row["samples_per_s"].items()}
        for key in CELL_MEASURES:
            row[key] = {d: statistics.median(v) for d, v in row[key].items()}
    table = sorted(rows.values(), key=lambda r: (*family(r), r["flops_per_batch"]))
    for row in table:
        speeds = row["samples_per_s"]
        cpu = speeds.get("cpu")
        row["speedup_vs_cpu"] = {d: s / cpu for d, s in speeds.items() if d != "cpu" and cpu}
    device_names = sorted(
        {d for r in records for d in [r["device"]]}, key=lambda d: (d != "cpu", d)
    )
    crossovers = []
    for device in device_names[1:] if "cpu" in device_names else device_names:
        for workload in dict.fromkeys(family(r) for r in table):
            mine = [r for r in table if family(r) == workload and device in r["samples_per_s"]]
            if not mine:
                continue  # this device never ran it
            first = next((r for r in mine if r["speedup_vs_cpu"].get(device, 0) > 1), None)
            crossovers.append(
                {
                    "device": device,
                    "model": workload[0],
                    "precision": workload[1],
                    **dict(zip(SETUP, workload[2:], strict=True)),
                    "hidden": first["hidden"] if first else None,
                    "batch_size": first["batch_size"] if first else None,
                    "speedup_vs_cpu": first["speedup_vs_cpu"][device] if first else None,
                }
            )
    return {"devices": device_names, "rows": table, "crossover": crossovers}
