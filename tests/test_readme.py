"""The README's generated result sections: rebuilt from report files, never typed by hand."""

from __future__ import annotations

import json

from physllm.reporting import readme, rebuild_index

from .conftest import REPO

README = """# title

<!-- results:notebooks:start -->
old numbers
<!-- results:notebooks:end -->

## next
"""


def write_notebook_report(reports, notebook, runs, status="ok", run=None, **metrics):
    folder = reports / notebook / "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"status": status, **(run or {})}))
    (folder / "metrics.json").write_text(json.dumps({"runs": runs, **metrics}))


def section_rows(text):
    """The notebook section's table rows of ``text``, by variant: {variant: [cells]}."""
    section = text.split(readme.NOTEBOOK_MARKERS[0])[1].split(readme.NOTEBOOK_MARKERS[1])[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| [")]
    return {cells[1].strip(): [c.strip() for c in cells] for cells in rows}


def run_metrics(val_loss, params=800_000, steps=200, unit="char"):
    return dict(
        val_loss=val_loss,
        val_bpc=val_loss / 0.6931,
        params=params,
        steps=steps,
        bpc_unit=unit,
        device="cpu (test box)",
    )


def test_notebook_rows_come_from_the_reports(tmp_path):
    reports = tmp_path / "reports"
    write_notebook_report(
        reports, "03_ngt", {"ngt": run_metrics(2.25, steps=1000), "gpt": run_metrics(2.2)}
    )
    text = readme.readme_text(README, reports)
    section = text.split(readme.NOTEBOOK_MARKERS[0])[1].split(readme.NOTEBOOK_MARKERS[1])[0]
    assert "old numbers" not in section and text.endswith("## next\n")
    row = next(line for line in section.splitlines() if "attractive (gaussian)" in line)
    # one run each: the gap as measured, and never a finding
    assert "| 0.80M | 1000 | 2.250 | 3.246 /char | 2.200 | +0.050 | 1 seed: not resolved |" in row
    assert "cpu (test box)" in section
    assert "01_hamiltonian/symplectic" in section  # reports not there are named, not invented
    assert readme.readme_text(text, reports) == text  # idempotent

    # a new run of the notebook changes the row; a failed one drops it
    write_notebook_report(
        reports, "03_ngt", {"ngt": run_metrics(2.1, steps=1000), "gpt": run_metrics(2.2)}
    )
    assert "| 2.100 | 3.030 /char | 2.200 | -0.100 |" in readme.readme_text(text, reports)
    write_notebook_report(reports, "03_ngt", {}, status="failed")
    assert "attractive (gaussian)" not in readme.readme_text(text, reports)


def test_a_headline_gap_over_seeds_shows_its_interval_and_verdict(tmp_path):
    reports = tmp_path / "reports"
    runs = {"ngt": run_metrics(2.1, steps=1000), "gpt": run_metrics(2.2)}
    clean = {"git_sha": "abc1234", "reproducible": True}
    gap = {"baseline": "gpt", "mean": -0.1, "ci95_low": -0.15, "ci95_high": -0.05, "n_seeds": 3}
    write_notebook_report(reports, "03_ngt", runs, run=clean, headline_gaps={"ngt": gap})
    row = section_rows(readme.readme_text(README, reports))["attractive (gaussian) kernel"]
    assert row[-2:] == ["-0.100 [-0.150, -0.050] (3 seeds)", "better"]
    assert row[0].endswith(")")  # a clean commit: no mark

    # an interval that holds 0 is not a finding, whatever the mean; under two seeds, no interval
    for low, high, n, cells in [
        (-0.2, 0.01, 3, ["-0.100 [-0.200, +0.010] (3 seeds)", "not resolved"]),
        (0.02, 0.3, 5, ["-0.100 [+0.020, +0.300] (5 seeds)", "worse"]),
        (None, None, 1, ["-0.100 (1 seed)", "1 seed: not resolved"]),
    ]:
        gap |= {"ci95_low": low, "ci95_high": high, "n_seeds": n}
        write_notebook_report(reports, "03_ngt", runs, run=clean, gaps={"ngt": gap})
        assert (
            section_rows(readme.readme_text(README, reports))["attractive (gaussian) kernel"][-2:]
            == cells
        )
    # a gap from physllm.experiments.gaps carries each side's mean over the seeds: the row
    # shows those (the single run's numbers are another learning rate), bits by the same factor
    gap |= {"ci95_low": -0.15, "ci95_high": -0.05, "val_loss": 2.05, "baseline_val_loss": 2.15}
    write_notebook_report(reports, "03_ngt", runs, run=clean, headline_gaps={"ngt": gap})
    row = section_rows(readme.readme_text(README, reports))["attractive (gaussian) kernel"]
    assert row[4:7] == ["2.050", f"{2.05 / 0.6931:.3f} /char", "2.150"]
    # a gap against another baseline is not this headline's
    gap |= {"baseline": "other", "ci95_low": -0.2, "ci95_high": -0.1, "n_seeds": 3}
    write_notebook_report(reports, "03_ngt", runs, run=clean, headline_gaps={"ngt": gap})
    row = section_rows(readme.readme_text(README, reports))["attractive (gaussian) kernel"]
    assert row[-2:] == ["-0.100", "1 seed: not resolved"]


def test_a_report_not_built_from_a_clean_commit_is_marked(tmp_path):
    reports = tmp_path / "reports"
    runs = {"ngt": run_metrics(2.1, steps=1000), "gpt": run_metrics(2.2)}
    cases = [
        ({"git_sha": "abc1234", "reproducible": True}, None),
        ({"git_sha": "abc1234", "reproducible": False, "dirty": ["x.py"]}, readme.UNCOMMITTED),
        ({"git_sha": "abc1234-dirty"}, readme.UNCOMMITTED),  # an older run.json: its sha says
        ({"git_sha": "abc1234"}, None),
        ({"git_sha": "unknown", "reproducible": False}, readme.NO_COMMIT),
        ({}, readme.NO_COMMIT),
    ]
    for run, why in cases:
        assert readme.reproducibility(run) == why, run
        write_notebook_report(reports, "03_ngt", runs, run=run)
        text = readme.readme_text(README, reports)
        marked = section_rows(text)["attractive (gaussian) kernel"][0].endswith(" ‡")
        assert marked == (why is not None), run
        if why:
            assert f"‡ {why} (the report's `run.json`): 03_ngt (" in text


def test_every_headline_names_a_run_of_its_committed_report():
    for h in readme.HEADLINES:
        runs = json.loads((REPO / "reports" / h.notebook / "cpu" / "metrics.json").read_text())[
            "runs"
        ]
        assert h.run in runs and h.baseline in runs, (h.notebook, h.run)


def test_update_readme_rewrites_only_when_changed(tmp_path):
    reports = tmp_path / "reports"
    write_notebook_report(reports, "03_ngt", {"ngt": run_metrics(2.0), "gpt": run_metrics(2.1)})
    path = tmp_path / "README.md"
    path.write_text(README)
    assert readme.update_readme(path, reports) is True
    assert readme.update_readme(path, reports) is False
    assert readme.update_readme(tmp_path / "missing.md", reports) is False


def test_repo_readme_is_what_the_committed_reports_generate():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.NOTEBOOK_MARKERS[0] in text and "<!-- leaderboard:cpu:start -->" in text
    assert readme.readme_text(text, REPO / "reports") == text, (
        "README's generated sections are stale: run `python -m physllm report` to regenerate them"
    )


def test_a_local_index_leaves_the_readme_beside_it_alone(tmp_path):
    reports = tmp_path / "reports"
    write_notebook_report(reports, "03_ngt", {"ngt": run_metrics(2.0), "gpt": run_metrics(2.1)})
    write_notebook_report(
        reports / "local", "03_ngt", {"ngt": run_metrics(9.0), "gpt": run_metrics(2.1)}
    )
    readme_path = tmp_path / "README.md"
    readme_path.write_text(README)
    rebuild_index(reports / "local", local=True)
    assert readme_path.read_text() == README  # a local run never touches the README
    rebuild_index(reports)  # the reference index regenerates it, from reference runs only
    text = readme_path.read_text()
    assert "| 2.000 |" in text and "9.000" not in text


def test_a_gap_whose_picked_rate_is_the_grids_highest_is_marked(tmp_path):
    reports = tmp_path / "reports"
    runs = {"ngt": run_metrics(2.1, steps=1000), "gpt": run_metrics(2.2)}
    clean = {"git_sha": "abc1234", "reproducible": True}
    gap = {"baseline": "gpt", "mean": -0.1, "ci95_low": -0.15, "ci95_high": -0.05, "n_seeds": 5}
    for lr, base_lr, marked in [(1e-3, 1e-3, False), (3e-3, 1e-3, True), (1e-3, 3e-3, True)]:
        gaps = {"ngt": {**gap, "lr": lr, "baseline_lr": base_lr}}
        grid = {"lrs": [3e-4, 1e-3, 3e-3], "seeds": [1, 2, 3, 4, 5]}
        write_notebook_report(
            reports, "03_ngt", runs, run=clean, headline_gaps=gaps, headline_grid=grid
        )
        text = readme.readme_text(README, reports)
        cell = section_rows(text)["attractive (gaussian) kernel"][-2]
        assert cell.endswith(" §") == marked
        assert ("§ The picked learning rate" in text) == marked
