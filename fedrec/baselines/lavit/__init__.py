"""LaVIT-style dynamic visual tokenizer as a centralized baseline (Jin et al., ICLR 2024,
arXiv 2309.04669): teacher ViT, tokenizer phases A/B and a tiny unified LM over visual and text
tokens, trained on offline images (:mod:`fedrec.data.vision`) through ``fedrec run``."""
