"""The training side of the loop, in rooms: `data` (sources and the raw store), `stages` (one module
per DVC stage), `loop` (monitors, ground truth, retraining policy, rollout decider), `driver` (the
stage list, DVC, hand-off, reproduce) and `backtest`. At the root: the CLI (`__main__`) and the
workspace every room shares. tests/pipeline/test_layout.py holds the rooms to their imports."""
