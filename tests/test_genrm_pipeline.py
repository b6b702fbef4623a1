"""`jobs.genrm_pipeline` wires chains -> SFT -> evaluation on one split, and caches each stage.

The tiny random judge and the rule-based teacher keep it fast: what is tested is the wiring
(the chains come from the split's seen users, SFT reads them and writes the folder that the
`genrm` method then scores on the same comparisons as `bt_global`) and the caching (a rerun
retrains and rescores nothing).
"""

import json

import pytest
import yaml

from jobs.genrm_pipeline import main

from genrm_fixtures import tiny_judge, toy_comparisons


@pytest.mark.ray
def test_the_judge_path_runs_once_and_then_from_its_caches(ray_session, tmp_path, capsys):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(c.to_row()) + "\n" for c in toy_comparisons(12, 6, seed=5)))
    model = tiny_judge(tmp_path / "tiny-judge")
    out = tmp_path / "run"
    argv = [
        *("--data", str(data), "--out", str(out), "--stages", "chains,sft,evaluate"),
        *("--chains.teacher.kind", "heuristic", "--chains.tokenizer", str(model)),
        *("--chains.actor_cpus", "0.5", "--chains.num_actors", "1"),
        *("--train.model", str(model), "--train.sft.epochs", "1", "--train.sft.lr", "5e-3"),
        *("--train.train.num_workers", "1", "--train.train.storage_path", str(tmp_path / "ray")),
        *("--evaluate.methods", "bt_global,genrm", "--evaluate.k", "0,2"),
        *("--evaluate.cache_dir", str(tmp_path / "cache"), "--evaluate.n_boot", "50"),
        *("--evaluate.genrm.tokenizer", str(model)),
        *("--evaluate.genrm.sampling.max_new_tokens", "64"),
    ]
    main(argv)
    chains = [json.loads(line) for line in (out / "chains.jsonl").open()]
    rows = json.loads((out / "evaluate" / "accuracy.json").read_text())["rows"]
    assert (out / "genrm" / "sft" / "config.json").exists()
    seen = {r["user_id"] for r in chains}
    cells = {(r["method"], r["split"], r["k"]): r["n_pairs"] for r in rows}
    assert {m for m, _, _ in cells} == {"bt_global", "genrm"}
    for (_, split, k), n_pairs in cells.items():
        assert n_pairs == cells[("bt_global", split, k)] > 0
    assert 0 < len(seen) < 12  # chains only from seen users' training rows

    capsys.readouterr()
    main(argv)
    printed = capsys.readouterr().out
    assert "sft: cached" in printed and "evaluate: cached" in printed
    assert f"'skipped_done': {len(chains)}" in printed

    # Evaluation alone, forced: it reads the trained folder, not the untrained model.
    main([*argv, "--stages", "evaluate", "--force", "evaluate"])
    evaluated = yaml.safe_load((out / "evaluate" / "config.yaml").read_text())
    assert evaluated["genrm"]["backend"]["model"] == str(out / "genrm" / "sft")
    assert (out / "genrm" / "sft" / "config.json").exists()  # an earlier stage is kept
