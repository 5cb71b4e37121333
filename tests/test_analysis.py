"""Multiplicity statistics and aggregates against numpy, and the analyze runner / CLI on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from melbo.cli import main
from melbo.evaluate.analysis import (
    Analysis,
    analyze,
    condition_number,
    cosine_stats,
    format_table,
    mean_direction,
    pairwise_cosines,
    select_features,
    top_singular_direction,
)
from melbo.evaluate.scores import score_edit
from melbo.features import Features
from melbo.models.fingerprint import model_fingerprint
from melbo.testing import tiny_tokenizer

PROMPTS = ["hello there", "how do I make tea"]
A, B = "Sure", "I"


def _random(d: int = 16, k: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, k, generator=g, dtype=torch.float64) + 0.5
    return M / M.norm(dim=0)


def test_pairwise_cosines_and_their_stats_equal_numpy() -> None:
    M = _random() * torch.arange(1, 7, dtype=torch.float64)  # columns of different norms
    X = M.numpy()
    Xn = X / np.linalg.norm(X, axis=0)
    G = Xn.T @ Xn
    want = G[np.triu_indices(6, k=1)]
    np.testing.assert_allclose(pairwise_cosines(M).numpy(), want, rtol=1e-12)
    mean, sd = cosine_stats(M)
    assert mean == pytest.approx(np.abs(want).mean(), rel=1e-12)
    assert sd == pytest.approx(np.abs(want).std(), rel=1e-12)  # ddof = 0
    assert all(math.isnan(x) for x in cosine_stats(M[:, :1]))


def test_condition_number_equals_numpy() -> None:
    M = _random(20, 7, seed=1)
    assert condition_number(M) == pytest.approx(np.linalg.cond(M.numpy()), rel=1e-10)
    assert condition_number(M.float()) == pytest.approx(np.linalg.cond(M.numpy()), rel=1e-5)
    dependent = torch.cat([M[:, :2], M[:, :1]], dim=1)
    assert condition_number(dependent) > 1e12


def test_aggregates_equal_hand_computed_mean_and_svd() -> None:
    M = _random(12, 5, seed=2)
    X = M.numpy()
    avg = X.mean(axis=1)
    np.testing.assert_allclose(mean_direction(M).numpy(), avg / np.linalg.norm(avg), rtol=1e-6, atol=1e-7)
    u = np.linalg.svd(X)[0][:, 0]
    u = u if u @ X.sum(axis=1) >= 0 else -u  # the sign rule: along the columns' mean
    svd = top_singular_direction(M)
    np.testing.assert_allclose(svd.numpy(), u, rtol=1e-5, atol=1e-6)
    assert float(svd.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(top_singular_direction(-M), -svd)  # the sign follows the set
    with pytest.raises(ValueError, match="average to zero"):
        mean_direction(torch.stack([M[:, 0], -M[:, 0]], dim=1))


def test_select_features_by_threshold_with_a_fallback() -> None:
    scores = [1.0, 7.0, 5.0, 9.0, 7.0]
    assert select_features(scores, 5.0) == ([3, 1, 4], "above_threshold")  # strict >, ties by index
    assert select_features(scores, 10.0, fallback_top=2) == ([3, 1], "top_k")
    with pytest.raises(ValueError, match="NaN"):
        select_features([1.0, float("nan")], 0.0)


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, Features]:
    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    g = torch.Generator().manual_seed(5)
    V = torch.nn.functional.normalize(torch.randn(32, 5, generator=g), dim=0)
    U = torch.nn.functional.normalize(torch.randn(32, 5, generator=g), dim=0)
    feats = Features(U=U, V=V, alpha=torch.ones(5), R=8.0, method="exponential", source_layer=1, target_layer=3,
                     objective=[1.0, 2.0, 2.5], model=model_fingerprint(model))
    return model, tok, feats


def test_analyze_rows_equal_direct_scores(setup: tuple[Any, Any, Features]) -> None:
    model, tok, feats = setup
    kw: dict[str, Any] = {"token_a": A, "token_b": B}
    res = analyze(model, tok, feats, PROMPTS, threshold=-1e9, **kw)  # every feature is in the set
    s = torch.tensor(res.feature_scores)
    assert res.set_rule == "above_threshold" and res.n_above == 5
    assert res.selected == res.ranking == torch.sort(s, descending=True, stable=True).indices.tolist()
    R, layer = feats.R, feats.source_layer
    for k in (0, 3):
        direct = score_edit(model, tok, PROMPTS, steer_vector=R * feats.V[:, k], layer=layer, **kw).mean()
        assert res.feature_scores[k] == pytest.approx(float(direct), abs=1e-5)
    assert res.unsteered == pytest.approx(float(score_edit(model, tok, PROMPTS, **kw).mean()), abs=1e-6)
    add = res.table["adding"]
    assert add["individual_mean"] == pytest.approx(float(s.mean()), abs=1e-6)
    assert add["individual_max"] == pytest.approx(float(s.max()), abs=1e-6)
    v_avg, v_svd = mean_direction(feats.V), top_singular_direction(feats.V)
    assert add["avg"] == pytest.approx(float(score_edit(model, tok, PROMPTS, steer_vector=R * v_avg, layer=layer, **kw).mean()), abs=1e-5)
    assert add["svd-"] == pytest.approx(float(score_edit(model, tok, PROMPTS, steer_vector=-R * v_svd, layer=layer, **kw).mean()), abs=1e-5)
    assert add["svd"] == max(add["svd+"], add["svd-"])
    src, tgt = res.table["ablating_sources"], res.table["ablating_targets"]
    assert src["avg"] == pytest.approx(float(score_edit(model, tok, PROMPTS, ablate_directions=v_avg, **kw).mean()), abs=1e-5)
    u_svd = top_singular_direction(feats.U)
    assert tgt["svd"] == pytest.approx(float(score_edit(model, tok, PROMPTS, ablate_directions=u_svd, **kw).mean()), abs=1e-5)
    ind = res.individual["ablating_targets"]
    assert ind[2] == pytest.approx(float(score_edit(model, tok, PROMPTS, ablate_directions=feats.U[:, 2], **kw).mean()), abs=1e-5)
    assert tgt["individual_max"] == pytest.approx(max(ind.values()))
    assert res.geometry["V"]["condition_number"] == pytest.approx(np.linalg.cond(feats.V.double().numpy()), rel=1e-5)
    # JSON round trip and the printed table
    again = Analysis.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.table == res.table and again.individual == res.individual and again.selected == res.selected
    text = format_table(res, top=3)
    assert "adding v (at R)" in text and "ablating u" in text and "indiv. max" in text


def test_analyze_falls_back_to_the_best_features_when_none_passes(setup: tuple[Any, Any, Features]) -> None:
    model, tok, feats = setup
    res = analyze(model, tok, feats, PROMPTS, threshold=1e9, fallback_top=2, max_ablations=1, token_a=A, token_b=B)
    assert res.set_rule == "top_k" and res.n_above == 0 and res.selected == res.ranking[:2]
    assert list(res.individual["ablating_sources"]) == res.selected[:1]
    assert "set = the 2 best instead" in format_table(res)


def test_cli_analyze_writes_json_and_prints_the_table(setup: tuple[Any, Any, Features], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, tok, feats = setup
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    feats.save(tmp_path / "feats")
    (tmp_path / "val.txt").write_text("\n".join(PROMPTS) + "\n")
    argv = ["analyze", str(tmp_path / "feats"), "--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "val.txt"),
            "--threshold", "0", "--top", "3", "--token-a", A, "--token-b", B]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ablating v" in out and "top 3 features" in out
    res = Analysis.load(tmp_path / "feats" / "analysis.json")  # the default --out
    assert len(res.feature_scores) == 5 and res.config["threshold"] == 0.0
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    assert Analysis.load(tmp_path / "a.json").feature_scores == pytest.approx(res.feature_scores, abs=1e-6)
