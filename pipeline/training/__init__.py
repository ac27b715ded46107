"""The training side: the train and test stages (stage.py) and what they are made of: data,
models, loops, the costs of a run, its profiled window and the model it logs."""
