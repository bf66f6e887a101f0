"""Where a sentence ends: the text rules (:mod:`.splitter`), their place on token ids and the incremental tracker
(:mod:`.tracker`), and the stopping criterion a round of ``generate`` runs (:mod:`.stopping_criteria`)."""
