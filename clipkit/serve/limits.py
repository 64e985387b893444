"""What one request, one client connection and the whole server may cost: every limit of
``clipkit serve`` in one place (no imports, so the CLI reads its defaults from here without
loading the server). README's "Serving" section states them."""

# A request
MAX_K = 1000  # results
MAX_QUERY_CHARS = 1000  # characters of one text
MAX_QUERIES = 16  # query parts (texts, images, rows) in one search
MAX_EMBED_IMAGES = MAX_QUERIES  # images in one /api/embed request
DEFAULT_UPLOAD_MB = 20  # a request's body
# Memory a request's images may take as they are decoded (serve.uploads): one 9400 x 9400
# one-bit PNG (530 MB), or a 22-megapixel RGBA one; JPEGs decode at the model's scale.
DEFAULT_DECODE_MB = 512
DECODES_AT_ONCE = 2  # requests' worth of decoding memory the server holds at once
THUMBNAIL_SIDE = 256

# A connection (serve.connections)
HEADER_TIMEOUT_S = 10  # to send a request's line and headers, from its first byte or idle
BODY_TIMEOUT_S = 60  # to send the body after them (20 MB at 350 KB/s)
KEEP_ALIVE_S = 5  # idle between requests
# Connections held at once, at most; fewer where the open-file limit needs the room (each
# connection is a file, and the indexes, models and logs need some too).
MAX_CONNECTIONS = 1000
FILES_KEPT_FREE = 128

# The process
MAX_PROCESSES = 64
GRACE_S = 10  # a stop lets requests in flight finish for this long, then answers them 503
EXIT_WITHIN_S = 5  # and the process ends within this much more, whatever its threads do
