import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personal_rm.data import DataError, load_comparisons, resolve_dataset
from personal_rm.data.io import shared_data_root, write_comparisons

GOOD = {"user_id": "u1", "prompt": "p", "chosen": "a", "rejected": "b", "meta": {"x": 1}}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "chosen"}, "field 'chosen': missing"),
        ({**GOOD, "user_id": "  "}, "field 'user_id': empty text"),
        ({**GOOD, "prompt": ""}, "field 'prompt': empty text"),
        ({**GOOD, "rejected": 3}, "field 'rejected': expected a string, got int"),
        ({**GOOD, "rejected": "a"}, "field 'rejected': identical to 'chosen'"),
        ({**GOOD, "meta": [1]}, "field 'meta': expected an object, got list"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{not json", "invalid JSON"),
    ],
)
def test_malformed_row_names_file_line_and_field(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(DataError) as info:
        load_comparisons(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert info.value.error.line == 3


def test_skip_mode_counts_and_locates_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "prompt": None}, "", GOOD, "{"])
    result = load_comparisons(path, on_error="skip")
    assert len(result.comparisons) == 2
    assert [(e.line, e.field) for e in result.skipped] == [(2, "prompt"), (5, None)]


def test_empty_response_is_data_not_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "rejected": ""}])
    assert load_comparisons(path).comparisons[0].rejected == ""


def test_gzip_and_parquet_round_trip(tmp_path):
    comparisons = load_comparisons(write_jsonl(tmp_path / "d.jsonl", [GOOD] * 3)).comparisons
    write_comparisons(comparisons, tmp_path / "d.jsonl.gz")
    with gzip.open(tmp_path / "d.jsonl.gz", "rt") as f:
        assert len(f.readlines()) == 3
    assert load_comparisons(tmp_path / "d.jsonl.gz").comparisons == comparisons
    pq.write_table(pa.Table.from_pylist([c.to_row() for c in comparisons]), tmp_path / "d.parquet")
    loaded = load_comparisons(tmp_path / "d.parquet").comparisons
    assert loaded == comparisons
    assert loaded[0].meta == {"x": 1}


def test_unknown_dataset_and_format_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="known: "):
        resolve_dataset("no_such_dataset")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported format"):
        load_comparisons(tmp_path / "d.csv")


def test_shipped_llmfao_loads_without_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONAL_RM_SHARED_DATA", str(tmp_path))  # nothing there
    comparisons = load_comparisons("llmfao").comparisons
    assert len(comparisons) == 5460
    assert len({c.user_id for c in comparisons}) == 124


@pytest.mark.parametrize(("name", "rows"), [("jester", 194073), ("global_dialogues", 14041)])
def test_shared_datasets_load_by_name(name, rows):
    if not shared_data_root().exists():
        pytest.skip("../shared/data is not beside this checkout")
    assert len(load_comparisons(name).comparisons) == rows


def test_a_folder_or_glob_of_shards_reads_as_one_dataset(tmp_path):
    """`--data` may name many shards (JSONL and Parquet mixed); an error names its own shard."""
    shards = tmp_path / "shards"
    shards.mkdir()
    first = [{**GOOD, "user_id": f"u{i}"} for i in range(3)]
    write_jsonl(shards / "part-0.jsonl", first)
    pq.write_table(pa.Table.from_pylist([{**GOOD, "user_id": "u9"}]), shards / "part-1.parquet")
    (shards / "README.txt").write_text("not a shard")
    for path in (shards, f"{shards}/part-*"):
        users = [c.user_id for c in load_comparisons(path).comparisons]
        assert users == ["u0", "u1", "u2", "u9"]
    write_jsonl(shards / "part-2.jsonl", [GOOD, {**GOOD, "prompt": 7}])
    with pytest.raises(DataError, match=r"part-2\.jsonl:2: field 'prompt'"):
        load_comparisons(shards)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shards"):
        load_comparisons(tmp_path / "empty")
