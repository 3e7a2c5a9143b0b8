"""The names of the files a registered version's run carries in MLflow, light to import: the
workspace names its reference profile after the artifact it is logged as."""

SCHEMA_ARTIFACT = "feature_schema.json"
PROFILE_ARTIFACT = "reference_profile.json"  # the workspace file too: register logs it as it is
COMPILED_ARTIFACT = "compiled/model.onnx"
"""The run's ONNX graph of its model (`pipeline.stages.compile_onnx`), served after its parity
check passed."""
CALIBRATION_ARTIFACT = "evaluation/calibration.json"  # register logs the candidate's evaluation folder
RECORD_DIR = "reproduce"
"""The run's artefact folder holding params.yaml, dvc.lock and environment.txt."""
