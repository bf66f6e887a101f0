"""The data path, in the order a sentence takes it: plan and row state (:mod:`.plan`), the loop (:mod:`.loop`), the
question the aligner is told (:mod:`.prompt`), the upstream round (:mod:`.engines`), the sentence boundary
(:mod:`.boundary`), the aligner call (:mod:`.aligner_call`), the splice (:mod:`.splice`), the KV cache
(:mod:`.cache`) and the streamer (:mod:`.streamers`); the pair of criteria and processors a round adds to ``generate``
(:mod:`.boundary.stopping_criteria`, :mod:`.logits_process`)."""
