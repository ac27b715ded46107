"""The compare command: stage.py reads runs from MLflow, judges them and logs the verdict;
the rest is plain data in and out, with neither MLflow nor torch: records.py (runs, groups,
findings), rules.py, speed.py and sanity.py (the rules), evidence.py (how sure a finding is),
changes.py (what changed in the environment), render.py and ci.py (what it shows)."""
