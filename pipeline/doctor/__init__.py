"""The doctor command: checks a device's operations against the CPU's. stage.py runs it;
checks.py is the engine (one check, its tolerances, its statuses); battery.py the fixed
checks; replay.py those of one training step of your workload."""
