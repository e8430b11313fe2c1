"""VICTOR video-language pre-training as a centralized baseline (Lei et al., ACM MM 2021,
arXiv 2104.09411) on the offline moving-digit videos (:mod:`fedrec.data.vision`)."""
