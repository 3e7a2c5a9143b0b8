"""The stages room: one module per DVC stage (ingest, validate, split, train, evaluate, register,
promote) and the helpers only stages use (candidates, models, compile_onnx, provenance, reports,
summary). A stage never imports another stage: what one hands the next goes through the workspace's
files, which DVC tracks. Stages import `data`, never the loop, the driver or the backtests."""
