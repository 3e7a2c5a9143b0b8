"""The loop room: what watches the served models and acts on what it sees, between training runs.
The drift and quality monitors (`monitor`), ground truth collection (`ground_truth`), the
retraining policy (`policy`) and the rollout decider (`judgement` → `evidence` → `decider`). It
never imports a stage: retraining reaches the stages through the driver, run by the DAGs."""
