"""``lantern-engine serve``: Lantern's analysis over HTTP for other programs, safe by default.

One loaded model serves a bounded pool of worker threads; a gate in front of the app checks the
bearer token, the Host header, the upload size and the pool's room before any of a request's
body is read. The modules, in the order a request meets them:

    settings   what the service was started with; the refusals to start (no token off loopback)
    gate       ASGI middleware: request id, token, Host, size limit, admission, the access log
    pool       the worker threads and the admission count (workers + queue) behind the 503
    app        the FastAPI routes (OpenAPI at /docs) and their errors in plain words
    jobs       what a worker does with an upload: load, analyse, build the response
    uploads    an upload as a temporary file with a generated name in a private folder
    records    the JSON: the one result schema (engine.result), maps, DICOM objects, the model

Nothing here is imported by the viewer or the packaged app: FastAPI and uvicorn are the
``service`` extra. This package's __init__ imports none of its modules (tests/test_layout.py).
"""
