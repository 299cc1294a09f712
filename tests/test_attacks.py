"""`megatron evaluate RUN --attack ...` on the session's tiny run: the clips rebuilt from the faces cache,
attacked through the whole pixel path, scored, tabled and plotted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from megatron_utils.cli import main
from megatron_utils.training.evaluate import evaluate_run


def test_cli_attacks_the_split_and_the_clean_row_is_the_cached_evaluation(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    out = tmp_path / "adversarial"
    code = main(["evaluate", str(run), "--split", "val", "--attack", "fgsm", "pgd", "--eps", "4", "16",
                 "--attack-steps", "3", "--device", "cpu", "--out", str(out)])
    assert code == 0 and "adversarial.csv" in capsys.readouterr().out
    table = pd.read_csv(out / "adversarial.csv")
    assert [tuple(row) for row in table[["attack", "eps"]].itertuples(index=False)] == [
        ("none", 0), ("fgsm", 4), ("fgsm", 16), ("pgd", 4), ("pgd", 16)]
    assert (table["videos"] == 6).all() and (out / "adversarial.png").stat().st_size > 0
    # The clean row scores the pixels the cache was made from: each video's P(fake) is the cached one.
    # (Not the AUC: a tiny head nearly ties videos, and float rounding flips which of a tie ranks first.)
    cached = evaluate_run(run, split="val", out_dir=tmp_path / "cached", device="cpu").scores
    per_video = pd.read_csv(out / "adversarial_scores.csv")
    clean = per_video[per_video["attack"] == "none"].merge(cached, on="video_id", suffixes=("", "_cached"))
    assert len(clean) == 6 and not clean["probability_cached"].isna().any()
    np.testing.assert_allclose(clean["probability"], clean["probability_cached"], atol=1e-6)
    # Attacks push every video towards the wrong class: strictly down, and the strongest furthest.
    p_true = table.set_index(["attack", "eps"])["p_true_class"]
    assert p_true[("pgd", 16)] < p_true[("pgd", 4)] < p_true[("none", 0)]
    assert p_true[("fgsm", 16)] < p_true[("none", 0)]
