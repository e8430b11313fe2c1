"""CrossTimeNet baseline (fedrec.baselines.crosstimenet): masking, joint vocabulary, the
MiniLM word-row sample, macro-F1, the schedule, DTW against the textbook recursion, and runs
through ``fedrec run``: learning on generated domains, resume in every stage, stages chained by
``init_from``, frozen fine-tuning, and one-line config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import config_with, strip_timing
from sklearn.metrics import f1_score

from fedrec.baselines.crosstimenet.dtw import (
    choose_window,
    dtw_distances,
    dtw_reference,
    one_nn_dtw,
)
from fedrec.baselines.crosstimenet.model import Vocabulary, mask_tokens, minilm_word_rows
from fedrec.baselines.crosstimenet.trainer import CrossTimeNetTrainer, linear_schedule, macro_f1
from fedrec.errors import ConfigError
from fedrec.results import RunDir, load_checkpoint_file
from fedrec.runner import run_experiment


def raw_config(**params) -> dict:
    p = {"domains": ["sines1", "sines3"], "target": "sines1", "encoder": {"layers": 1},
         "codebook_size": 16, "tokenizer_d": 16, "tokenizer_blocks": 1, "tokenizer_epochs": 3,
         "pretrain_epochs": 2, "pretrain_batch_size": 16, "pretrain_lr": 5e-4}
    p.update(params)
    return {"mode": "centralized", "seed": 0, "threads": 1, "name": "ctn",
            "data": {"synthetic": {"n_users": 20, "n_items": 20, "mean_len": 6, "max_len": 10}},
            "model": {"name": "crosstimenet", "params": p},
            "train": {"epochs": 3, "batch_size": 16, "lr": 5e-4, "eval_every": 1,
                      "patience": 10, "metric": "accuracy"}}


def test_exact_masking_replaces_exactly_the_chosen_share_and_labels_only_those():
    ids = torch.randint(0, 50, (40, 20))
    gen = torch.Generator().manual_seed(0)
    for ratio, k in ((0.15, 3), (0.3, 6), (0.5, 10), (0.75, 15)):
        inputs, labels, chosen = mask_tokens(ids, ratio, 99, gen)
        assert (chosen.sum(1) == k).all()
        assert (inputs[chosen] == 99).all() and torch.equal(inputs[~chosen], ids[~chosen])
        assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    # the code's i.i.d. draw: the share is the ratio on average only
    _, _, chosen = mask_tokens(torch.zeros(2000, 50, dtype=torch.long), 0.3, 1, gen, "bernoulli")
    share = chosen.float().mean().item()
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / chosen.numel()) ** 0.5
    assert len(set(chosen.sum(1).tolist())) > 1
    with pytest.raises(ValueError, match="mask ratio"):
        mask_tokens(ids, 1.0, 99, gen)


def test_joint_vocabulary_offsets_each_codebook_then_the_mask_token():
    v = Vocabulary(("a", "b", "c"), (4, 8, 2))
    assert [v.offset(d) for d in "abc"] == [0, 4, 12]
    assert v.mask_id == 14 and v.size == 15


def test_word_mapping_is_a_seeded_sample_of_distinct_minilm_rows():
    from safetensors import safe_open

    from fedrec.plm import minilm_dir

    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as fh:
        table = fh.get_tensor("embeddings.word_embeddings.weight")
    rows = minilm_word_rows(50, seed=3)
    assert torch.equal(rows, minilm_word_rows(50, seed=3))
    assert not torch.equal(rows, minilm_word_rows(50, seed=4))
    match = (rows[:, None, :] == table[None, :, :]).all(-1)  # [50, vocab]
    assert (match.sum(1) >= 1).all() and len(set(match.float().argmax(1).tolist())) == 50


def test_macro_f1_equals_sklearn_and_schedule_warms_up_then_decays():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 6, 300)
    assert macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    f = [linear_schedule(s, 20, 0.2) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a > b for a, b in zip(f[4:], f[5:], strict=False))
    assert f[-1] == pytest.approx(1 / 16)
    assert [linear_schedule(s, 4, 0.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_dtw_equals_the_textbook_recursion_and_window_zero_is_squared_euclidean():
    g = torch.Generator().manual_seed(0)
    Q, R = torch.randn(3, 2, 9, generator=g), torch.randn(4, 2, 9, generator=g)
    for w in (0, 1, 3, 9):
        got = dtw_distances(Q, R, w).numpy()
        np.testing.assert_allclose(got, dtw_reference(Q.numpy(), R.numpy(), w), rtol=1e-12)
    eu = ((Q[:, None].double() - R[None].double()) ** 2).sum((2, 3)).numpy()
    np.testing.assert_allclose(dtw_distances(Q, R, 0).numpy(), eu, rtol=1e-12)
    # chunking over queries changes nothing
    np.testing.assert_array_equal(dtw_distances(Q, R, 2, max_elements=1).numpy(),
                                  dtw_distances(Q, R, 2).numpy())


def test_one_nn_dtw_recognises_a_shifted_pattern_that_euclidean_misses():
    t = torch.arange(30, dtype=torch.float64)
    bump = lambda c: torch.exp(-0.5 * ((t - c) / 1.5) ** 2)  # noqa: E731
    X = torch.stack([bump(10), bump(20), -bump(10), -bump(20)])[:, None, :]
    y = torch.tensor([0, 0, 1, 1])
    query = torch.stack([bump(14), -bump(16)])[:, None, :]
    assert one_nn_dtw(X, y, query, window=6).tolist() == [0, 1]
    window, acc = choose_window(X, y)
    assert acc == 1.0 and window >= 0


def test_run_learns_the_generated_domains_and_reports_accuracy_f1_and_usage(tmp_path):
    # 0.70-0.82 test accuracy over seeds 0-2 here: a wide margin above both chance and the bound
    cfg = config_with(raw_config(tokenizer_epochs=15, tokenizer_lr=5e-3, codebook_size=32,
                                 tokenizer_d=32), **{"train.epochs": 6, "train.lr": 2e-3})
    out = run_experiment(cfg, tmp_path / "r", progress=False)
    test = out["test"]
    assert {"accuracy", "macro_f1", "usage", "perplexity"} <= set(test)
    assert test["accuracy"] > 0.5  # 3 balanced classes: chance is 1/3
    log = RunDir(tmp_path / "r").read_metrics()
    stages = [r["stage"] for r in log]
    assert stages == ["tokenizer"] * 15 + ["pretrain"] * 2 + ["finetune"] * 6
    tok = [r["train/mse/sines1"] for r in log if r["stage"] == "tokenizer"]
    assert tok[-1] < 0.7 * tok[0]  # the tokenizer learns to reconstruct
    assert all(np.isfinite(r["train/loss"]) for r in log)


def _crash_at(monkeypatch, stage_step: int, attr: str):
    original = CrossTimeNetTrainer.train_step

    def crashing(self, s):
        if s == stage_step:
            target = self.ctx.model.tokenizers["sines1"] if attr == "tokenizer" else self.ctx.model
            name = "forward" if attr == "tokenizer" else attr
            real, calls = getattr(target, name), {"n": 0}

            def wrapped(*args, **kw):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return real(*args, **kw)

            setattr(target, name, wrapped)
        return original(self, s)

    monkeypatch.setattr(CrossTimeNetTrainer, "train_step", crashing)


@pytest.mark.parametrize("step,attr", [(1, "tokenizer"), (3, "mlm_loss"), (6, "classify")])
def test_a_run_crashed_in_any_stage_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch,
                                                                           step, attr):
    cfg = config_with(raw_config())
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    _crash_at(monkeypatch, step, attr)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    monkeypatch.undo()
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert strip_timing(RunDir(tmp_path / "crash").read_metrics()) == \
        strip_timing(RunDir(tmp_path / "ref").read_metrics())


def _state(path):
    ckpt = load_checkpoint_file(path / "checkpoint.pt")
    return ckpt["loop"].get("best_model") or ckpt["trainer"]["model"]


def test_stages_chain_through_init_from_and_frozen_fine_tuning_keeps_the_encoder(tmp_path):
    tok = tmp_path / "tok"
    run_experiment(config_with(raw_config(stages=["tokenizer"]),
                               **{"train.metric": "neg_mse"}), tok, progress=False)
    pre = tmp_path / "pre"
    run_experiment(config_with(raw_config(stages=["pretrain"], init_from=str(tok)),
                               **{"train.metric": "neg_mlm_loss"}), pre, progress=False)
    s_tok, s_pre = _state(tok), _state(pre)
    for k, v in s_tok.items():
        if k.startswith("tokenizers."):
            assert torch.equal(v, s_pre[k]), k  # tokenizers carried over unchanged
    ft = tmp_path / "ft"
    out = run_experiment(config_with(raw_config(stages=["finetune"], init_from=str(pre),
                                                finetune="frozen")), ft, progress=False)
    assert 0.0 <= out["test"]["accuracy"] <= 1.0
    s_ft = _state(ft)
    enc = [k for k in s_pre if k.startswith("encoder.")]
    assert enc and all(torch.equal(s_pre[k], s_ft[k]) for k in enc)  # frozen encoder
    assert any(not torch.equal(s_ft[k], v) for k, v in s_pre.items() if k.startswith("head."))
    # another vocabulary cannot take this encoder
    with pytest.raises(ConfigError, match="init_from"):
        run_experiment(config_with(raw_config(stages=["finetune"], init_from=str(pre),
                                              domains=["sines1"])), tmp_path / "x",
                       progress=False)


@pytest.mark.parametrize("params,match", [
    ({"domains": ["sine1"]}, "did you mean"),
    ({"stages": ["finetune", "pretrain"]}, "stages"),
    ({"stages": ["pretrain", "finetune"]}, "init_from"),
    ({"init_from": "/nowhere"}, "init_from"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"encoder": {"layers": 7}}, "layers"),
    ({"encoder": {"hidden": 64}}, "only 'layers'"),
    ({"target": "GunPoint"}, "target"),
])
def test_bad_settings_are_one_line_config_errors(tmp_path, params, match):
    with pytest.raises(ConfigError, match=match) as err:
        run_experiment(config_with(raw_config(**params)), tmp_path / "bad", progress=False)
    assert "\n" not in str(err.value)


def test_a_finetune_run_from_an_unfinished_run_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="not a finished run"):
        run_experiment(config_with(raw_config(stages=["finetune"],
                                              init_from=str(tmp_path / "half"))),
                       tmp_path / "bad", progress=False)


def test_a_diverging_tokenizer_stops_the_run_marked_failed_without_metrics(tmp_path):
    from fedrec.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="non-finite tokenizer loss"):
        run_experiment(config_with(raw_config(tokenizer_lr=1e30)), tmp_path / "div",
                       progress=False)
    assert (tmp_path / "div" / "error.txt").is_file()
    assert not (tmp_path / "div" / "summary.json").exists()
