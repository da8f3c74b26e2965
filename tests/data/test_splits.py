import pytest

from semi3d.config import SplitsConfig
from semi3d.data.splits import read_id_list, resolve_splits
from semi3d.errors import InputError

IDS = [f"c{i:02d}" for i in range(20)]


def S(**kw):
    return SplitsConfig.model_validate(kw)


def test_first_last_rest():
    s = resolve_splits(S(labelled={"first": 4}, validation={"last": 5}), IDS, set(IDS))
    assert s["labelled"] == IDS[:4] and s["validation"] == IDS[-5:]
    assert s["unlabelled"] == IDS[4:15] and s["test"] == []


def test_list_file_and_missing_id(tmp_path):
    f = tmp_path / "l.list"
    f.write_text("c03\nc01\n\n# comment\n")
    assert read_id_list(f) == ["c03", "c01"]
    s = resolve_splits(S(labelled={"list": str(f)}), IDS, set(IDS))
    assert s["labelled"] == ["c03", "c01"]
    f.write_text("c03\nnope\n")
    with pytest.raises(InputError, match="nope"):
        resolve_splits(S(labelled={"list": str(f)}), IDS, set(IDS))


def test_random_is_seeded():
    a = resolve_splits(S(labelled={"random": 5, "seed": 1}), IDS, set(IDS))
    b = resolve_splits(S(labelled={"random": 5, "seed": 1}), IDS, set(IDS))
    c = resolve_splits(S(labelled={"random": 5, "seed": 2}), IDS, set(IDS))
    assert a == b and a["labelled"] != c["labelled"] and len(a["labelled"]) == 5


def test_test_split_is_sealed():
    with pytest.raises(InputError, match="test split can never"):
        resolve_splits(S(labelled={"ids": ["c00", "c01"]}, test={"ids": ["c01"]}), IDS, set(IDS))
    s = resolve_splits(S(labelled={"first": 2}, test={"last": 3}), IDS, set(IDS))
    assert s["test"] == IDS[-3:] and not set(s["test"]) & set(s["unlabelled"])


def test_unlabelled_cases_not_usable_as_labelled():
    labelled = set(IDS[:10])
    s = resolve_splits(S(labelled={"first": 3}, validation={"last": 2}), IDS, labelled)
    assert s["validation"] == IDS[8:10]  # last labelled cases, not the unlabelled tail
    with pytest.raises(InputError, match="no label"):
        resolve_splits(S(labelled={"ids": ["c15"]}), IDS, labelled)


def test_empty_labelled_and_too_many():
    with pytest.raises(InputError, match="empty"):
        resolve_splits(S(labelled={"first": 0}), IDS, set(IDS))
    with pytest.raises(InputError, match="asks for 30"):
        resolve_splits(S(labelled={"first": 30}), IDS, set(IDS))


def test_domain_selector_and_tags(tmp_path):
    from semi3d.data.splits import load_domains, read_domains, save_splits

    tags = {i: ("A" if int(i[1:]) < 8 else "B") for i in IDS}
    s = resolve_splits(S(labelled={"domain": "A", "first": 3}, validation={"domain": "B", "last": 2},
                         unlabelled={"domain": ["B"]}), IDS, set(IDS), domains=tags)
    assert s["labelled"] == IDS[:3] and s["validation"] == IDS[18:] and s["unlabelled"] == IDS[8:18]
    with pytest.raises(InputError, match="splits.labelled.domain.*'C'.*tags: A, B"):
        resolve_splits(S(labelled={"domain": "C"}), IDS, set(IDS), domains=tags)
    with pytest.raises(InputError, match="no domain tags"):
        resolve_splits(S(labelled={"domain": "A"}), IDS, set(IDS))
    # both file layouts; a case without a tag is refused with the file named
    (tmp_path / "flat.json").write_text('{"c00": "A", "c01": "B"}')
    (tmp_path / "dd.json").write_text('{"cases": {"c00": {"domain": "A", "source_id": "x"}}, "domains": {}}')
    (tmp_path / "bad.json").write_text('{"c00": 3}')
    assert read_domains(tmp_path / "flat.json") == {"c00": "A", "c01": "B"}
    assert read_domains(tmp_path / "dd.json") == {"c00": "A"}
    with pytest.raises(InputError, match="bad.json.*'c00' has no tag"):
        read_domains(tmp_path / "bad.json")
    # splits.json carries every split case's tag
    save_splits(tmp_path / "splits.json", s, {"c00": "A"})
    got = load_domains(tmp_path / "splits.json")
    assert got["c00"] == "A" and got["c01"] == "default" and set(got) == {i for v in s.values() for i in v}


# nnU-Net v2's folds of these 23 ids: nnunetv2.utilities.crossval_split.generate_crossval_split
# (scikit-learn 1.9.1's KFold(5, shuffle=True, random_state=12345)), the 'val' list of each fold
NNUNET_FOLDS = [["c03", "c08", "c10", "c17", "c19"], ["c00", "c07", "c12", "c15", "c16"],
                ["c06", "c11", "c14", "c18", "c20"], ["c09", "c13", "c21", "c22"], ["c01", "c02", "c04", "c05"]]


def test_cross_validation_folds_are_nnunets():
    ids = [f"c{i:02d}" for i in range(23)][::-1]  # sorted before splitting, as nnU-Net does
    labelled = set(ids[3:])  # c20.. c22 (the first three here) have no label: not in any fold
    got = []
    for k in range(5):
        s = resolve_splits(S(validation={"fold": k}), ids, set(ids))
        assert sorted(s["validation"]) == NNUNET_FOLDS[k]
        assert s["validation"] == [i for i in ids if i in s["validation"]]  # the dataset's order
        assert sorted(s["labelled"] + s["validation"]) == sorted(ids) and s["unlabelled"] == []
        got += s["validation"]
        three = resolve_splits(S(validation={"fold": k % 3, "folds": 3}), ids, labelled)["validation"]
        assert set(three) <= labelled
    assert sorted(got) == sorted(ids)
    with pytest.raises(ValueError, match="at most one of first / last / random / fold"):
        S(validation={"fold": 0, "last": 3})
    with pytest.raises(ValueError, match="numbered 0..4"):
        S(validation={"fold": 5})
    with pytest.raises(InputError, match="splits.validation: 5 folds need at least 5 cases, only 3"):
        resolve_splits(S(validation={"fold": 0}), ids, set(ids[:3]))


def test_cross_validation_folds_equal_nnunets_own_code():
    pytest.importorskip("sklearn")
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from semi3d.data.splits import cross_validation_fold

    for n, folds in ((23, 5), (64, 5), (10, 3)):
        ids = [f"la_{(i * 7919) % 1000:03d}" for i in range(n)]
        for k, split in enumerate(generate_crossval_split(sorted(ids), n_splits=folds)):
            assert sorted(cross_validation_fold(ids, k, folds)) == sorted(split["val"])
