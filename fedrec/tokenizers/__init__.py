"""Discrete tokenizers shared by methods: an EMA vector quantiser (:mod:`.vq`) and CrossTimeNet's
per-domain time-series tokenizer (:mod:`.timeseries`)."""
