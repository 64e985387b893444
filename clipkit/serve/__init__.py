"""``clipkit serve``: indexes behind an HTTP API, loaded once and searched by many requests.

``limits`` (what a request, a connection and the server may cost), ``config`` (what to
serve, checked without heavy imports), ``uploads`` (decoding uploaded images within their
budget), ``state`` (the loaded indexes and models, reloads, thumbnails: no web framework),
``app`` (the FastAPI routes, the only module that imports the web framework) and ``server``
(uvicorn, its connection limits, and stopping).
"""
