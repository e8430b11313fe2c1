"""Cross-domain / multi-scenario settings (fedrec.data.domains) and the shared MovieLens readers
(fedrec.data.movielens_meta): generated data always, ML-100K when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data.domains import (
    DomainConfig,
    build_domains,
    domain_config,
    domain_stats,
    load_domains,
    synthetic_domain_frame,
)
from fedrec.data.movielens_meta import read_items, read_ml1m_movies
from fedrec.errors import ConfigError, DataFormatError

GENRES = ("a", "b", "c")


def toy_frame() -> tuple[pd.DataFrame, dict[int, list[int]]]:
    """Items 1-2 genre a, 3 genres (b, a), 4-5 genre b, 6 genre c; two users."""
    genres = {1: [0], 2: [0], 3: [1, 0], 4: [1], 5: [1], 6: [2]}
    rows = [  # user, item, rating, timestamp (out of order on purpose)
        (10, 2, 5, 3), (10, 1, 4, 1), (10, 3, 2, 2), (10, 4, 5, 5), (10, 5, 5, 4), (10, 6, 5, 0),
        (20, 1, 5, 9), (20, 4, 3, 1),
    ]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]), genres


def test_disjoint_split_uses_first_listed_genre_and_chronology():
    frame, genres = toy_frame()
    cfg = DomainConfig(min_eval_len=3, n_negatives=2)
    sp = build_domains(frame, genres, GENRES, {"A": ["a"], "B": ["b"]}, cfg, "toy")
    assert sp.domains == ("A", "B") and sp.target == "B"
    # item 3 lists genre b first, so it belongs to B only; item 6 (genre c) is dropped
    assert sp.item_ids["A"].tolist() == [0, 1, 2]
    assert sp.item_ids["B"].tolist() == [0, 3, 4, 5]
    assert sp.user_ids.tolist() == [10, 20]
    # user 10 in B, by time: 3 (t2), 5 (t4), 4 (t5) -> train [3], valid 5, test 4 (local ids)
    loc = {int(o): j for j, o in enumerate(sp.item_ids["B"])}
    assert sp.train["B"][0].tolist() == [loc[3]]
    assert (sp.valid["B"][0], sp.test["B"][0]) == (loc[5], loc[4])
    # user 20 has 1 item in B (< min_eval_len): train only, nothing held out
    assert sp.train["B"][1].tolist() == [loc[4]] and sp.test["B"][1] == 0
    assert sp.history("B", "test")[0].tolist() == [loc[3], loc[5]]
    # negatives are unseen items of the domain (user 10 saw every B item: none left -> zeros)
    assert sp.negatives["B"][0].tolist() == [0, 0]
    st = domain_stats(sp)
    assert st["B/users"] == 2 and st["B/interactions"] == 4 and st["overlap/users"] == 2
    assert st["B/density"] == pytest.approx(4 / (2 * 3))


def test_overlapping_scenarios_and_min_rating():
    frame, genres = toy_frame()
    cfg = DomainConfig(overlapping=True, min_rating=4)
    sp = build_domains(frame, genres, GENRES, {"A": ["a"], "B": ["b"]}, cfg, "toy")
    # item 3 was rated 2 (dropped by min_rating); with overlap it would be in both domains
    assert 3 not in sp.item_ids["A"] and 3 not in sp.item_ids["B"]
    cfg = DomainConfig(overlapping=True)
    sp = build_domains(frame, genres, GENRES, {"A": ["a"], "B": ["b"]}, cfg, "toy")
    assert 3 in sp.item_ids["A"] and 3 in sp.item_ids["B"]


def test_sparse_target_truncates_a_share_of_users_and_keeps_held_out_items():
    base = load_domains({"synthetic": {"n_users": 200}})
    sp = load_domains({"synthetic": {"n_users": 200}, "sparse_target_share": 0.5,
                       "sparse_target_keep": 1})
    t = sp.target
    assert sp.cold.sum() == round(0.5 * (base.test[t] > 0).sum())
    for u in np.flatnonzero(sp.cold):
        assert sp.train[t][u].tolist() == base.train[t][u][-1:].tolist()
    assert (sp.test[t] == base.test[t]).all() and (sp.valid[t] == base.valid[t]).all()
    for u in np.flatnonzero(~sp.cold):  # the others and the sources are untouched
        assert sp.train[t][u].tolist() == base.train[t][u].tolist()


def test_synthetic_is_deterministic_and_interests_correlate_across_domains():
    spec = DomainConfig().synthetic.model_copy(update={"n_users": 300, "noise": 0.0,
                                                       "correlation": 1.0})
    f1, g1, _, _ = synthetic_domain_frame(spec)
    f2, _, _, _ = synthetic_domain_frame(spec)
    pd.testing.assert_frame_equal(f1, f2)
    # with correlation 1 and no noise each user's clusters agree in both domains
    f1 = f1.assign(cluster=[g1[i][0] % spec.n_clusters for i in f1["item"]],
                   domain=[g1[i][0] // spec.n_clusters for i in f1["item"]])
    per = f1.groupby(["user", "domain"])["cluster"].nunique()
    assert (per == 1).all()
    first = f1.groupby(["user", "domain"])["cluster"].first().unstack()
    assert (first[0] == first[1]).all()


def test_negatives_are_unseen_items_of_the_domain():
    sp = load_domains({"synthetic": {"n_users": 100}, "n_negatives": 20})
    for d in sp.domains:
        for u in np.flatnonzero(sp.test[d] > 0):
            seen = set(sp.history(d, "test")[u].tolist()) | {int(sp.test[d][u])}
            neg = sp.negatives[d][u]
            assert not seen & set(neg.tolist()) and len(set(neg.tolist())) == 20
            assert neg.min() >= 1 and neg.max() <= sp.n_items(d)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^domains\.sparse_target_share: "):
        domain_config({"sparse_target_share": 1.5})
    with pytest.raises(ConfigError, match=r"^domains\.synthetic\.n_users: "):
        domain_config({"synthetic": {"n_users": 0}})
    with pytest.raises(ConfigError, match=r"^domains\.colour: "):
        domain_config({"colour": 1})
    frame, genres = toy_frame()
    with pytest.raises(ConfigError, match=r"^domains\.groups\.B: unknown genre 'z'"):
        build_domains(frame, genres, GENRES, {"A": ["a"], "B": ["z"]}, DomainConfig(), "toy")
    with pytest.raises(ConfigError, match=r"^domains\.groups\.B: genre 'a' is also in group"):
        build_domains(frame, genres, GENRES, {"A": ["a"], "B": ["a"]}, DomainConfig(), "toy")
    with pytest.raises(ConfigError, match=r"^domains\.target: "):
        build_domains(frame, genres, GENRES, {"A": ["a"]}, DomainConfig(target="Q"), "toy")
    with pytest.raises(ConfigError, match=r"^domains\.groups: "):
        load_domains({"groups": {"x": ["a"]}})


def test_bad_files_name_file_and_line(tmp_path: Path):
    item = tmp_path / "u.item"
    good = "1|T (1995)|01-Jan-1995||url|" + "|".join(["0"] * 18 + ["1"])
    item.write_text(good + "\n2|bad|line\n", encoding="latin-1")
    with pytest.raises(DataFormatError, match=r"u\.item:2: expected 24"):
        read_items(item)
    movies = tmp_path / "movies.dat"
    movies.write_text("1::Toy Story (1995)::Comedy\n2::X::Nonsense\n", encoding="latin-1")
    with pytest.raises(DataFormatError, match=r"movies\.dat:2: "):
        read_ml1m_movies(movies)
    root = tmp_path / "ml-100k"
    (root / "raw").mkdir(parents=True)
    (root / "ratings.csv").write_text("user,item,rating,timestamp\n1,1,5,3\n1,2,x,4\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: "):
        load_domains({"dataset": "ml-100k", "data_dir": str(tmp_path)})


def test_ml100k_domains(real_data_dir: Path):
    if not (real_data_dir / "ml-100k" / "raw" / "u.item").is_file():
        pytest.skip("ml-100k not found")
    sp = load_domains({"dataset": "ml-100k", "sparse_target_share": 0.2}, real_data_dir)
    st = domain_stats(sp)
    assert sp.domains == ("thrill", "feel") and st["users"] == 943
    assert st["thrill/interactions"] + st["feel/interactions"] <= 100_000
    assert st["overlap/share"] > 0.9 and st["cold_users"] > 0
    # disjoint: no original item id in both domains
    assert not set(sp.item_ids["thrill"][1:].tolist()) & set(sp.item_ids["feel"][1:].tolist())
    # Toy Story (Animation|Children's|Comedy) goes to "feel"; GoldenEye (Action|...) to "thrill"
    assert 1 in sp.item_ids["feel"] and 2 in sp.item_ids["thrill"]


def test_cross_domain_cut_is_strictly_before_the_held_out_item():
    # user 10: A (genre a) items 1 (t1), 2 (t3), 7 (t5), 8 (t9), 9 (t10) -> train 1, 2, 7;
    # B (genre b) items 3 (t2), 5 (t4), 4 (t5) -> train 3, valid 5 (t4), test 4 (t5)
    frame, genres = toy_frame()
    extra = pd.DataFrame([(10, 7, 5, 5), (10, 8, 5, 9), (10, 9, 5, 10)], columns=frame.columns)
    genres |= {7: [0], 8: [0], 9: [0]}
    sp = build_domains(frame.pipe(lambda f: pd.concat([f, extra])), genres, GENRES,
                       {"A": ["a"], "B": ["b"]}, DomainConfig(n_negatives=1), "toy")
    loc = {int(o): j for j, o in enumerate(sp.item_ids["A"])}
    assert sp.train["A"][0].tolist() == [loc[1], loc[2], loc[7]]
    assert sp.train_time["A"][0].tolist() == [1, 3, 5]
    assert (sp.valid_time["B"][0], sp.test_time["B"][0]) == (4, 5)
    cut = sp.cutoff("B", "valid")
    assert cut[0] == 4 and cut[1] == np.iinfo(np.int64).max  # user 20: nothing held out in B
    assert np.array_equal(sp.cutoff("B", "train"), cut)
    assert sp.before("A", cut)[0].tolist() == [loc[1], loc[2]]  # t1, t3 < 4
    # test (t5): item 7 ties with it and is left out; the earlier ones stay
    assert sp.before("A", sp.cutoff("B", "test"))[0].tolist() == [loc[1], loc[2]]
    assert sp.before("A", cut)[1].tolist() == sp.train["A"][1].tolist()  # no cut
    with pytest.raises(ValueError, match="split"):
        sp.cutoff("B", "all")


def test_synthetic_users_have_one_clock_over_all_domains():
    spec = DomainConfig().synthetic.model_copy(update={"n_users": 50})
    frame, genres, _, _ = synthetic_domain_frame(spec)
    for _, rows in frame.groupby("user"):  # distinct times 0..n-1 over all domains
        assert sorted(rows["timestamp"]) == list(range(len(rows)))
        dom = rows["item"].map(lambda i: genres[i][0] // spec.n_clusters)
        for _, part in rows.groupby(dom):  # each domain keeps its generation order
            assert part["timestamp"].is_monotonic_increasing
    sp = load_domains({"synthetic": {"n_users": 50}})
    src, tgt = sp.sources[0], sp.target
    for u in np.flatnonzero(sp.test[tgt] > 0):
        assert sp.valid_time[tgt][u] < sp.test_time[tgt][u]
        assert (sp.train_time[tgt][u] < sp.valid_time[tgt][u]).all()
    cut = sp.before(src, sp.cutoff(tgt, "test"))
    assert sum(map(len, cut)) < sum(map(len, sp.train[src]))  # the cut removes something
