"""The aligner: what the loop asks of it (:mod:`.model`'s requests and correction protocol), its checkpoint config
(:mod:`.config`), the model (:mod:`.model`), its fast decoder (:mod:`.decoding`), the one-copy LoRA adapter
(:mod:`.adapter`), the vLLM-served aligner (:mod:`.vllm`), what happens to a correction after decoding (the edit rule
:mod:`.edits`, the calculator :mod:`.calculator`), request batching across threads (:mod:`.batching`) and the model
card (:mod:`.model_card`)."""
