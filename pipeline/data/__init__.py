"""The data room: where batches come from (`sources`: bundled, files, the simulated world and its
live service) and where accepted ones are kept (`store`, the raw store and its version; `contract`,
what accepted data looks like). It imports only `core` and the workspace."""
