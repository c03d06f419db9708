"""bench/report.py: README tables are regenerated from the stored results, nothing else moves."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_loader import load_bench

ROOT = Path(__file__).resolve().parents[1]


def test_fenced_blocks_are_rewritten_from_the_named_sections(tmp_path):
    report = load_bench("report")
    (tmp_path / "r.md").write_text(
        "# title\n\n## Steps\n\n| a |\n|---|\n| 1 |\n\n## Other\n\nnot wanted\n\n"
        "Command: `python bench/x.py --seeds 10`\n")
    readme = ("before\n<!-- bench: r.md | Steps -->\nstale table\n<!-- /bench -->\nafter\n")
    new = report.rewrite(readme, tmp_path)
    assert new.startswith("before\n<!-- bench: r.md | Steps -->\n**Steps**\n\n| a |")
    assert "stale" not in new and "not wanted" not in new
    assert "Command: `python bench/x.py --seeds 10`" in new  # every block names its command
    assert new.endswith("<!-- /bench -->\nafter\n")
    assert report.rewrite(new, tmp_path) == new  # idempotent


def test_a_missing_file_or_section_is_one_clear_error(tmp_path):
    report = load_bench("report")
    (tmp_path / "r.md").write_text("## Steps\n\nx\n")
    with pytest.raises(report.ReportError, match="no section 'Nope'; it has: Steps"):
        report.rewrite("<!-- bench: r.md | Nope -->\n<!-- /bench -->", tmp_path)
    with pytest.raises(report.ReportError, match="does not exist"):
        report.rewrite("<!-- bench: gone.md -->\n<!-- /bench -->", tmp_path)


def test_a_whole_file_block_drops_the_files_title(tmp_path):
    report = load_bench("report")
    (tmp_path / "h.md").write_text("# Title\n\nCommand line.\n\n| a |\n|---|\n| 1 |\n")
    new = report.rewrite("<!-- bench: h.md -->\n<!-- /bench -->", tmp_path)
    assert new == "<!-- bench: h.md -->\nCommand line.\n\n| a |\n|---|\n| 1 |\n<!-- /bench -->"


def test_a_whole_file_block_adds_no_readme_sections(tmp_path):
    report = load_bench("report")
    (tmp_path / "f.md").write_text("# Title\n\n| a |\n|---|\n\n## Pair\n\n| b |\n")
    new = report.rewrite("<!-- bench: f.md -->\n<!-- /bench -->", tmp_path)
    assert "**Pair**" in new and "## " not in new  # a file's sections would split the README


def test_the_readme_tables_are_the_stored_results():
    """Every fenced README table equals what bench/report.py makes from bench/results/."""
    report = load_bench("report")
    readme = (ROOT / "README.md").read_text()
    assert report.rewrite(readme) == readme, "run `python bench/report.py` and commit"


def _suite_doc(seed: int, r2: dict[str, float], exact: bool) -> dict:
    """A stored world-model-suite result of one seed: two systems at 1 % noise."""
    def system(name: str, target: bool) -> dict:
        return {"name": name, "available": True, "dynamic": [1], "structure_target": target,
                "runs": {"ours-ct@0.01": {
                    "method": "ours-ct", "noise": 0.01,
                    "heldout": {"0": 1.0, "1": r2[name]},
                    "structure": {"1": {"exact": exact}}}}}

    return {"command": f"python bench/world_model_suite.py --seed {seed}",
            "code": {"commit": "abcdef0123", "dirty": False}, "config": {"seed": seed},
            "results": [system("duffing", True), system("car2d", False)]}


def test_world_model_seeds_counts_targets_per_level_from_the_worst_coordinate(tmp_path):
    seeds = load_bench("world_model_seeds")
    docs = [_suite_doc(100, {"duffing": 0.9995, "car2d": 0.2}, True),
            _suite_doc(101, {"duffing": 0.998, "car2d": 0.99999}, False)]
    text, summary = seeds.report(docs, ["a", "b"], "cmd")
    level = summary["methods"]["ours-ct"]["per_level"]["0.01"]
    # duffing meets 0.999 on seed 100 only; car2d has no target and is never counted
    assert (level["met"], level["scored"]) == (1, 2)
    assert (level["exact"], level["structure_scored"]) == (1, 2)
    assert level["missed_by"] == ["Duffing"]
    assert "| Duffing | **0.999500** | 0.9980 |" in text  # bold only where the target is met
    assert "| MuJoCo Car2d | 0.2000 | 0.999990 |" in text  # no target: never bold
    assert "`python bench/world_model_suite.py --seed 101` (code abcdef0)" in text
    with pytest.raises(SystemExit, match="seed 100 is given twice"):
        seeds.report([docs[0], docs[0]], ["a", "a"], "cmd")


def _fleet_row(seed: int, robots: int, wall: float, solved: bool = True) -> dict:
    return {"seed": seed, "robots": robots, "solved": solved,
            "reason": "solved" if solved else "wall-clock limit", "wall_s": wall,
            "steps_per_robot": {f"robot{k}": 400 for k in range(1, robots + 1)},
            "episodes_per_robot": {f"robot{k}": 2 for k in range(1, robots + 1)},
            "steps_total": 400 * robots, "world_speed": 0.9, "other_s": 10.0, "cpu_s": 40.0,
            "cores": 1.0, "policy_loaded": {}, "policies_published": 0}


def test_fleet_ratio_is_per_seed_and_an_unsolved_run_fails_the_target():
    import argparse

    fleet = load_bench("fleet")
    args = argparse.Namespace(speed=1.0, sync=0.0, planner=True, steps=3000, code="abc1234",
                              command="python bench/fleet.py --planner")
    rows = [_fleet_row(100, 1, 80.0), _fleet_row(100, 4, 36.0),
            _fleet_row(101, 1, 60.0), _fleet_row(101, 4, 33.0)]
    assert fleet.ratios(rows) == {100: 0.45, 101: 0.55}
    text = fleet.table(rows, None, None, args)
    assert "seed 100: 0.45, seed 101: 0.55; median **0.5** (target ≤ 0.5: met)" in text
    assert "Command: `python bench/fleet.py --planner` (code abc1234)" in text
    # a seed whose fleet did not solve has no ratio, and the target is not met
    rows[3] = _fleet_row(101, 4, 900.0, solved=False)
    text = fleet.table(rows, None, None, args)
    assert "seed 101: -; median **0.45** (target ≤ 0.5: not met)" in text
