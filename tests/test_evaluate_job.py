"""The evaluation job end to end on a slice of the real LLMFAO data (shipped with the package)."""

import json

from jobs.evaluate import main


def test_evaluate_writes_the_accuracy_contract(tmp_path, embedding_cache):
    out = tmp_path / "results"
    main(
        [
            "--max_users",
            "60",
            "--k",
            "0,4",
            "--n_boot",
            "200",
            "--out",
            str(out),
            "--cache_dir",
            str(embedding_cache),
        ]
    )
    result = json.loads((out / "accuracy.json").read_text())
    assert result["dataset"] == "llmfao"
    rows = result["rows"]
    assert {(r["method"], r["split"], r["k"]) for r in rows} == {
        (m, s, k)
        for m in ("bt_global", "bt_user", "lowrank")
        for s, k in (("seen", "all"), ("unseen", 0), ("unseen", 4))
    }
    for row in rows:
        assert {
            "method",
            "split",
            "k",
            "n_users",
            "acc_user",
            "acc_sample",
            "ci_user",
            "worst10_user",
        } <= set(row)
        assert row["ci_user"][0] <= row["acc_user"] <= row["ci_user"][1]
        assert row["worst10_user"] <= row["acc_user"]
    # The sanity check that data, embeddings and metrics line up: real signal, far from chance.
    glob = next(r for r in rows if r["method"] == "bt_global" and r["split"] == "seen")
    assert glob["acc_user"] > 0.65
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert "| bt_global |" in (out / "tables.md").read_text()


def test_genrm_is_scored_on_the_same_comparisons_as_the_feature_methods(tmp_path, embedding_cache):
    """The LLM judge's method (here through the rule-based CPU backend, which parses always)
    goes through the harness: its rows are the contract's, over the very test comparisons
    that `bt_global` is scored on, capped at --test_per_user per user."""
    out = tmp_path / "results"
    main(
        [
            *("--max_users", "30", "--k", "0,4", "--n_boot", "100", "--out", str(out)),
            *("--cache_dir", str(embedding_cache), "--methods", "bt_global,genrm"),
            *("--test_per_user", "2", "--genrm.backend.kind", "heuristic"),
        ]
    )
    rows = json.loads((out / "accuracy.json").read_text())["rows"]
    by_method = {
        m: {(r["split"], r["k"]): r for r in rows if r["method"] == m}
        for m in ("bt_global", "genrm")
    }
    assert (
        set(by_method["genrm"])
        == set(by_method["bt_global"])
        == {
            ("seen", "all"),
            ("unseen", 0),
            ("unseen", 4),
        }
    )
    for cell, judged in by_method["genrm"].items():
        feature = by_method["bt_global"][cell]
        assert (judged["n_users"], judged["n_pairs"]) == (feature["n_users"], feature["n_pairs"])
        assert judged["n_pairs"] <= 2 * judged["n_users"]
        assert judged["parse_failure_rate"] == 0 and 0 <= judged["acc_user"] <= 1
