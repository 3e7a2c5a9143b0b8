"""What crosses process boundaries, shared by the model server (`api`), the pipeline (`pipeline`)
and the stack's tools (`ops`): the registry contract and every tag name, the prediction-log store,
the rollout terms and split, the schema, reference profile, params and settings, the compiled
runtime and model serialization, drift statistics, quality estimators, metric functions, logging and
the error model. It imports neither `api` nor `pipeline`."""
