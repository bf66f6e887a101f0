"""Serving: ``stream-aligner serve``, the OpenAI-compatible server (:mod:`.server`, its settings
:mod:`.server_config`), and the aligners a ``transformers serve`` model directory offers by name
(:mod:`.served_aligners`)."""
