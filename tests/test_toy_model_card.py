"""piti.evaluation.card (eval/toy_model_card.py): the card's numbers come from the logs and alignment.json,
not by hand."""

from __future__ import annotations

import json

import pytest
from test_toy_alignment import run_script

from piti.evaluation import card as card_lib

FIELDS = "step,loss,mse,vb,perceptual,adv,disc,lr,grad_norm,sec_per_step\n"


def write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FIELDS + "".join(f"{s},{m},{10 * m},0,,,,0.0002,0.1,{sec}\n" for s, m, sec in rows))


def test_log_summary_counts_compute_seconds_and_resumed_repeats():
    rows = [
        {"step": 25, "loss": 0.4, "sec_per_step": 2.0},
        {"step": 50, "loss": 0.3, "sec_per_step": 2.0},
        {"step": 25, "loss": 0.3, "sec_per_step": 2.0},  # resumed from step 0: 25 steps done again
        {"step": 50, "loss": 0.2, "sec_per_step": 100.0},
    ]  # paused interval, counted at the median
    s = card_lib.log_summary(rows)
    assert s["steps"] == 50 and s["seconds"] == pytest.approx(4 * 25 * 2.0)
    assert s["final_loss"] == pytest.approx((0.4 + 0.3 + 0.3 + 0.2) / 4)


def test_a_continued_run_counts_its_steps_on_from_the_runs_it_follows():
    runs = [("joint-mask", 5000), ("joint-depth", 2500), ("joint-cont-depth", 4500), ("feedback-depth", 1000)]
    logs = {run: [{"step": n}] for run, n in runs}
    assert card_lib.step_offset("joint-mask", logs) == 0
    assert card_lib.step_offset("joint-cont-depth", logs) == 2500
    assert card_lib.step_offset("feedback-mask", logs) == 5000  # mask has no joint-cont run
    assert card_lib.step_offset("feedback-depth", logs) == 2500 + 4500
    assert card_lib.step_offset("feedback-hint-depth", logs) == 2500 + 4500 + 1000  # its own stage, not feedback's


def test_card_block_is_rebuilt_from_logs_and_alignment(tmp_path):
    runs, models = tmp_path / "runs", tmp_path / "models"
    write_log(runs / "pretrain" / "log.csv", [(25, 0.5, 2.0), (50, 0.25, 4.0)])
    write_log(runs / "joint-mask" / "log.csv", [(25, 0.1, 1.0)])
    write_log(runs / "joint-cont-mask" / "log.csv", [(25, 0.05, 2.0)])  # continued in a new run
    models.mkdir()
    ious = {"sky": [0.8, 0.98], "boat": [None, None]}
    row = {
        "size": 128,
        "miou_generated": 0.5,
        "miou_real": 0.9,
        "miou_ratio": 0.5 / 0.9,
        "fid_t": 2.5,
        "seconds_per_image": 3.2,
        "iou_per_class": ious,
        "settings": {"guidance": 5.0},
    }
    (models / "alignment.json").write_text(
        json.dumps(
            {
                "command": "python eval/toy_alignment.py",
                "num": 50,
                "threads": 2,
                "fid_t": "FID-T note",
                "tasks": {"mask": row},
            }
        )
    )
    (models / "README.md").write_text("# Card\nhand-written\n<!-- numbers:begin -->\nold\n<!-- numbers:end -->\ntail\n")

    r = run_script("toy_model_card", "--runs", runs, "--models-dir", models)
    assert r.returncode == 0, r.stderr
    text = (models / "README.md").read_text()
    assert text.startswith("# Card\nhand-written\n") and text.endswith("<!-- numbers:end -->\ntail\n")
    assert "old" not in text
    assert "| pretrain | 50 | 2.5 | 0.3750 |" in text  # (25 x 2 s + 25 x 4 s) / 60, mean of the last losses (not MSEs)
    assert "| joint-mask | 25 | 0.4 | 0.1000 |" in text
    assert "| joint-cont-mask | 25 | 0.8 | 0.0500 |" in text
    assert "| mask | 128 | 0.500 | 0.900 | 0.56 | 2.50 | 3.20 |" in text
    assert "| task | sky | boat |" in text and "| mask | 0.80 / 0.98 | - |" in text
    assert "Sampling settings: guidance 5.0." in text
    assert (models / "logs" / "pretrain.csv").is_file() and (models / "loss_curves.png").stat().st_size > 0
    card = json.loads((models / "card.json").read_text())
    assert card["total_seconds"] == pytest.approx(150 + 25 + 50)


def test_card_names_each_tasks_settings_when_they_differ():
    row = {
        "size": 64,
        "miou_generated": 0.5,
        "miou_real": 0.9,
        "miou_ratio": 0.55,
        "fid_t": 2.0,
        "seconds_per_image": 1.0,
    }
    align = {
        "command": "c",
        "num": 2,
        "threads": 1,
        "fid_t": "note",
        "tasks": {"mask": dict(row, settings={"guidance": 8.0}), "sketch": dict(row, settings={"guidance": 5.0})},
    }
    text = card_lib.markdown(
        {"command": "c", "stages": {}, "total_seconds": 0, "files": {}, "total_mb": 0, "alignment": align}
    )
    assert "Sampling settings, mask: guidance 8.0." in text and "Sampling settings, sketch: guidance 5.0." in text
    assert "Sampling settings:" not in text


def test_card_shows_each_tasks_own_measure_and_the_variety_kept():
    row = {"size": 128, "miou_generated": 0.4, "miou_real": 0.9, "miou_ratio": 0.44, "fid_t": 2.0}
    row.update(seconds_per_image=1.0, settings={"guidance": 5.0}, redraws_per_sample=0.01)
    control = {"measure": "depth RMSE", "generated": 2.0, "real": 1.0, "ratio": 0.5, "ratio_interval": [0.4, 0.6]}
    variety = {"num": 8, "samples": 4, "features_ratio": 0.75, "pixel_l1_ratio": 0.6}
    variety["features_ratio_interval"] = [0.5, 0.95]
    variety.update(recommended={"features": 0.3, "pixel_l1": 0.06}, official_noise={"features": 0.4, "pixel_l1": 0.1})
    align = {"command": "c", "num": 2, "threads": 1, "fid_t": "note", "diversity_note": "feature note"}
    align["tasks"] = {"depth": dict(row, control=control, diversity=variety)}
    text = card_lib.markdown(
        {"command": "c", "stages": {}, "total_seconds": 0, "files": {}, "total_mb": 0, "alignment": align}
    )
    assert "| depth | depth RMSE | 2.000 | 1.000 | **0.50** | 0.40-0.60 |" in text
    assert "| depth | 0.3000 | 0.4000 | **0.75** | 0.50-0.95 | 0.0600 | 0.1000 | 0.60 |" in text
    assert "feature note." in text
    assert "| depth | 128 | 0.400 | 0.900 | 0.44 | 2.00 | 1.00 |" in text
    assert "Redraws per base sample (`redraw_threshold`, `redraw_colour_threshold`; all samples of the calls" in text
    assert "a sample drawn again up to 3 times): depth 0.01." in text


def test_card_without_logs_is_a_clear_error(tmp_path):
    from piti.errors import DatasetError

    with pytest.raises(DatasetError, match="make toy-models"):
        card_lib.build_card(tmp_path / "none", tmp_path)
    r = run_script("toy_model_card", "--runs", tmp_path / "none", "--models-dir", tmp_path)
    assert r.returncode == 2 and "make toy-models" in r.stderr
