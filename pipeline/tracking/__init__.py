"""Everything MLflow: connecting to the store (store.py), runs and their writes and reads
(runs.py), how a run ends (lifecycle.py), which process logs it (process.py) and the
environment it records (environment.py). No torch here."""
