"""Online serving: an ASGI prediction API that follows the model registry.

config.py    ServeConfig, validated once from the CLI
protocol.py  request bodies (/predict, MLflow's /invocations) to a feature matrix
metrics.py   Prometheus metrics
slot.py      the model being served, swapped atomically when the registry alias moves
app.py       the FastAPI application and its routes
server.py    uvicorn with draining on SIGTERM, one or more worker processes
"""
