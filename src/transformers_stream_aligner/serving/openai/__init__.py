"""``stream-aligner serve``: an OpenAI-compatible, stream-aligned server, laid out as vLLM lays out an endpoint: the
request and response bodies (:mod:`.protocol`), the serving logic (:mod:`.serving`), the routes (:mod:`.api_router`),
and the operator's settings (:mod:`.config`)."""
