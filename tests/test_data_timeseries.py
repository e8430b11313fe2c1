"""The `.ts` reader, the UCR/UEA splits and the time-series registry (fedrec.data.timeseries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data import timeseries as T
from fedrec.data.registry import TIMESERIES_DATASETS, get_timeseries
from fedrec.errors import DataFormatError, DatasetNotFoundError

UNI = """# a comment
@problemName Tiny
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true a b

@data
1,2,3,4:a
5.5,6,7,-8e-1:b
0,0,0,1:a
"""

MULTI = """@problemName Multi
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true x y z
@data
1,2,3:4,5,6:z
1,?:7,8:x
9,8,7,6:1,2,3,4:y
"""


def write(tmp_path: Path, text: str, name: str = "f.ts") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_univariate_equal_length(tmp_path):
    d = T.read_ts(write(tmp_path, UNI))
    assert d.X.dtype == np.float32 and d.X.shape == (3, 1, 4)
    np.testing.assert_allclose(d.X[1, 0], [5.5, 6, 7, -0.8], rtol=1e-6)
    assert d.y.tolist() == [0, 1, 0] and d.class_names == ("a", "b")
    assert d.lengths.tolist() == [4, 4, 4] and d.equal_length and d.problem_name == "Tiny"


def test_multivariate_missing_and_unequal_length(tmp_path):
    d = T.read_ts(write(tmp_path, MULTI))
    assert d.X.shape == (3, 2, 4) and d.n_channels == 2
    assert d.y.tolist() == [2, 0, 1]  # header order x y z
    assert d.lengths.tolist() == [3, 2, 4] and not d.equal_length
    np.testing.assert_array_equal(d.X[0, 1, :3], [4, 5, 6])
    assert np.isnan(d.X[0, :, 3]).all()  # padding
    assert np.isnan(d.X[1, 0, 1]) and np.isnan(d.X[1, :, 2:]).all()  # '?' and padding
    np.testing.assert_array_equal(d.X[2, 0], [9, 8, 7, 6])


def test_unlabelled_file(tmp_path):
    d = T.read_ts(write(tmp_path, "@classLabel false\n@data\n1,2\n3,4\n"))
    assert d.y.tolist() == [-1, -1] and d.class_names == () and d.X.shape == (2, 1, 2)


def test_resample_and_crop(tmp_path):
    d = T.read_ts(write(tmp_path, MULTI))
    r = T.resample(d, 5)
    assert r.shape == (3, 2, 5) and np.isfinite(r).all()
    np.testing.assert_allclose(r[0, 0], [1, 1.5, 2, 2.5, 3])  # linear over the valid part
    np.testing.assert_allclose(r[1, 0], 1.0)  # only one value observed: constant
    np.testing.assert_allclose(r[2, 1], np.interp(np.linspace(0, 1, 5), np.linspace(0, 1, 4),
                                                  [1, 2, 3, 4]))
    u = T.read_ts(write(tmp_path, UNI, "u.ts"))
    np.testing.assert_array_equal(T.resample(u, 4), u.X)
    np.testing.assert_array_equal(T.crop(u, 3), u.X[:, :, :3])
    with pytest.raises(ValueError, match="shortest case"):
        T.crop(d, 3)


BAD = [
    ("@problemName X\n@classLabel true a\n", 2, "before @data"),
    ("@problemName X\n1,2:a\n", 2, "expected a header tag"),
    ("@foo bar\n@data\n", 1, "unknown header tag @foo"),
    ("@univariate maybe\n@data\n", 1, "'true' or 'false'"),
    ("@dimensions two\n@data\n", 1, "positive integer"),
    ("@seriesLength 0\n@data\n", 1, "positive integer"),
    ("@timeStamps true\n@data\n", 1, "not supported"),
    ("@classLabel true\n@data\n", 1, "at least one label"),
    ("@classLabel false a\n@data\n", 1, "takes no labels"),
    ("@classLabel true a a\n@data\n", 1, "twice"),
    ("@classLabel\n@data\n", 1, "expects 'true LABEL"),
    ("@missing false\n@missing false\n", 2, "given twice"),
    ("@data\n1,2\n", 1, "@classLabel must come before @data"),
    ("@classLabel false\n@data stuff\n", 2, "takes no value"),
    ("@classLabel false\n@data\n", 2, "no data lines"),
    ("@univariate true\n@dimensions 2\n@classLabel false\n@data\n", 4, "contradicts"),
    ("@univariate false\n@dimensions 1\n@classLabel false\n@data\n", 4, "contradicts"),
    ("@classLabel true a\n@data\n1,2:a\n@missing true\n", 4, "header tag after @data"),
    ("@classLabel true a\n@data\n1,2:a\n1,2\n", 4, "':LABEL'"),
    ("@classLabel true a b\n@data\n1,2:a\n1,2:c\n", 4, "'c' is not declared"),
    ("@dimensions 2\n@classLabel true a\n@data\n1,2:3,4:a\n1,2:a\n", 5, "1 channels; expected 2"),
    ("@classLabel false\n@data\n1,2:3,4\n1,2\n", 4, "1 channels; expected 2"),
    ("@classLabel true a\n@data\n1,x:a\n", 3, "channel 1: expected a number or '?', got 'x'"),
    ("@classLabel true a\n@data\n1,inf:a\n", 3, "finite number"),
    ("@classLabel true a\n@data\n1,,2:a\n", 3, "got ''"),
    ("@dimensions 2\n@classLabel true a\n@data\n1,2::a\n", 4, "channel 2 is empty"),
    ("@missing false\n@classLabel true a\n@data\n1,?:a\n", 4, "@missing false"),
    ("@seriesLength 3\n@classLabel true a\n@data\n1,2,3:a\n1,2:a\n", 5, "expected 3"),
    ("@equalLength true\n@classLabel true a\n@data\n1,2,3:a\n1,2:a\n", 5, "expected 3"),
    ("@equalLength true\n@dimensions 2\n@classLabel false\n@data\n1,2:1\n", 5, "expected 2"),
]


@pytest.mark.parametrize("text,line,what", BAD)
def test_malformed_names_file_line_and_expectation(tmp_path, text, line, what):
    path = write(tmp_path, text)
    with pytest.raises(DataFormatError) as exc:
        T.read_ts(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: "), msg
    assert what in msg, msg


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        T.read_ts(tmp_path / "none.ts")
    bad = tmp_path / "b.ts"
    bad.write_bytes(b"\xff\xfe@data")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        T.read_ts(bad)


def test_stratified_split_is_seeded_and_stratified():
    y = np.repeat(np.arange(3), [10, 20, 2])
    kept, held = T.stratified_split(y, 0.2, seed=7)
    assert np.bincount(y[held]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(y)))
    again = T.stratified_split(y, 0.2, seed=7)
    np.testing.assert_array_equal(held, again[1])
    assert not np.array_equal(held, T.stratified_split(y, 0.2, seed=8)[1])
    assert len(T.stratified_split(y, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        T.stratified_split(y, 1.0, seed=0)


def _tiny_problem(root: Path, name: str, test_labels: str = "a b") -> None:
    folder = root / "timeseries" / name
    folder.mkdir(parents=True)
    rows = "".join(f"{i},{i + 1},{i + 2}:{'ab'[i % 2]}\n" for i in range(10))
    (folder / f"{name}_TRAIN.ts").write_text(f"@classLabel true a b\n@data\n{rows}")
    (folder / f"{name}_TEST.ts").write_text(f"@classLabel true {test_labels}\n@data\n1,2,3:b\n")


def test_load_official_files_and_validation(tmp_path, monkeypatch):
    name = "GunPoint"  # a registered name, on generated files
    _tiny_problem(tmp_path, name)
    s = T.load(name, tmp_path, val_fraction=0.2, seed=0)
    assert len(s.train.y) == 8 and len(s.val.y) == 2 and len(s.test.y) == 1
    assert np.bincount(s.val.y).tolist() == [1, 1]
    assert not set(s.train.X[:, 0, 0].tolist()) & set(s.val.X[:, 0, 0].tolist())
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path))
    assert T.load(name).val.X.shape == (2, 1, 3)


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="unknown time-series dataset 'Gun'"):
        T.load("Gun", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no data root"):
        T.load("GunPoint")
    with pytest.raises(DatasetNotFoundError, match="GunPoint_TRAIN.ts"):
        T.load("GunPoint", tmp_path)
    _tiny_problem(tmp_path, "ArrowHead", test_labels="a b c")
    with pytest.raises(DataFormatError, match="ArrowHead_TEST.ts: @classLabel a b c; expected"):
        T.load("ArrowHead", tmp_path)


def test_registry_entries():
    assert list(TIMESERIES_DATASETS) == [
        "BasicMotions", "JapaneseVowels", "GunPoint", "ArrowHead", "ItalyPowerDemand"]
    assert all(get_timeseries(n).name == n for n in TIMESERIES_DATASETS)


@pytest.mark.parametrize("name", list(TIMESERIES_DATASETS))
def test_real_files_match_registry(real_data_dir, name):
    if not (real_data_dir / "timeseries" / name).is_dir():
        pytest.skip(f"{name} not in {real_data_dir}/timeseries")
    info = get_timeseries(name)
    s = T.load(name, real_data_dir, val_fraction=0.2, seed=0)
    n_train = len(s.train.y) + len(s.val.y)
    assert (n_train, len(s.test.y)) == (info.n_train, info.n_test)
    assert s.n_channels == info.channels and len(s.class_names) == info.n_classes
    lengths = np.concatenate([s.train.lengths, s.val.lengths, s.test.lengths])
    assert (int(lengths.min()), int(lengths.max())) == (info.min_length, info.max_length)
    assert set(np.concatenate([s.train.y, s.val.y]).tolist()) == set(range(info.n_classes))
    for part in (s.train, s.val, s.test):
        finite = np.isfinite(part.X).sum(axis=(1, 2))
        np.testing.assert_array_equal(finite, part.lengths * info.channels)  # NaN = padding only


def test_real_class_counts(real_data_dir):
    if not (real_data_dir / "timeseries" / "JapaneseVowels").is_dir():
        pytest.skip("JapaneseVowels not present")
    s = T.load("JapaneseVowels", real_data_dir)
    assert np.bincount(s.test.y).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    assert np.bincount(np.concatenate([s.train.y, s.val.y])).tolist() == [30] * 9
    assert (int(s.train.lengths.min()), int(max(s.train.lengths.max(), s.val.lengths.max()))) \
        == (7, 26)
