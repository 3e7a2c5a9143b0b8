"""The prediction log: its rows (`rows`), tables and migrations (`tables`), one open connection
(`store`) on SQLite or PostgreSQL (`backends`), and the readers that take its URL (`access`).

`BITLOOP_PREDICTION_LOG_URL` picks the store: a SQLite file path (the default,
`.bitloop/predictions.sqlite`; WAL mode, so one writer and any number of readers work at once)
or a `postgresql://` URL, which every model-server worker and replica can share. The model
server writes it through the bounded queue in `api/predlog.py`; the drift code of the model
server and of the drift monitor reads it here; tests write and read it through the same
functions. Nothing else writes SQL against it.
"""
