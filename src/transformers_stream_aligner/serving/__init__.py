"""Serving stream alignment: ``stream-aligner serve``, the OpenAI-compatible server (:mod:`.openai`: protocol,
serving, api_router, config), the ``custom_generate`` folder that ``transformers serve`` and the Hub run
(:mod:`.custom_generate`), and the aligners such a model directory offers by name (:mod:`.served_aligners`)."""
