"""``clipkit serve``: indexes behind an HTTP API, loaded once and searched by many requests.

``config`` (what to serve, checked without heavy imports), ``state`` (the loaded indexes and
models, reloads, thumbnails: no web framework) and ``app`` (the FastAPI routes, the only
module that imports the web framework).
"""
