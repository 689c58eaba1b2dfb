"""The service's own ceiling: its app (configuration, request id, deadline, memory guard, access log, metrics)
with one more endpoint that answers a constant small JSON and never reads the body.

No request the service really handles can be faster than this one, so floor / naive is the largest ratio any
endpoint of the service can reach against a naive handler (docs/performance.md, "Real workload").
"""

from service.app import create_app

app = create_app()


@app.post("/v1/floor")
def floor():
    return {"loss": 6.701176, "gradients": {"w": 6.691762, "b": 0.9987705}}
