"""The sweep command: every device against every workload, each a child run in a process of
its own (stage.py), and its tables (tables.py)."""
