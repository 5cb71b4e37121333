"""The deployment monitor (melbo.jobs.monitor) and detector metrics (melbo.evaluate.detection),
against hand-computed values, the model's own hidden states and planted perturbations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch import nn

from melbo.cli import main
from melbo.evaluate.detection import auroc, flag_rate, threshold_at_fpr
from melbo.features import Features
from melbo.jobs.monitor import (
    Monitor,
    fit_mahalanobis,
    ledoit_wolf,
    out_of_fold_scores,
    prompt_activations,
)
from melbo.models.fingerprint import model_fingerprint
from melbo.steering.interventions import steer
from melbo.testing import tiny_tokenizer

S, T = 1, 3
WORDS = ["cats", "tea", "bread", "rivers", "clocks", "maps", "snow", "jazz", "ships", "bees", "salt", "kites"]
VERBS = ["Describe", "Explain", "Write about", "Praise", "Summarise"]


_POOL = [f"{v} {a} and {b}." for v in VERBS for a in WORDS for b in WORDS if a != b]
_ORDER = torch.randperm(len(_POOL), generator=torch.Generator().manual_seed(0)).tolist()


def _prompts(n: int, offset: int = 0) -> list[str]:
    """n distinct prompts of one distribution; different offsets give disjoint sets (offset + n ≤ 660)."""
    return [_POOL[i] for i in _ORDER[offset : offset + n]]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(with_chat_template=True)


@pytest.fixture(scope="module")
def llama(tok: Any) -> nn.Module:
    return tiny_model("llama", vocab=len(tok))


@pytest.fixture(scope="module")
def planted(llama: nn.Module, tok: Any) -> tuple[Features, torch.Tensor, float]:
    """Features whose column 0 is a planted direction v* (the others random), U[:, 0] the
    layer-T shift that adding R·v* at layer S causes, and R."""
    g = torch.Generator().manual_seed(0)
    d = llama.config.hidden_size
    V = torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=torch.float64)).Q
    clean = _prompts(8, offset=500)
    base = prompt_activations(llama, tok, clean, [T], chat=True)[T]
    R = 4.0
    with steer(llama, (R * V[:, 0]).float(), layer=S):
        moved = prompt_activations(llama, tok, clean, [T], chat=True)[T]
    u0 = (moved - base).mean(0)
    U = torch.linalg.qr(torch.cat([u0[:, None], torch.randn(d, 3, generator=g, dtype=torch.float64)], 1)).Q
    U[:, 0] *= torch.sign(U[:, 0] @ u0)
    feats = Features(U=U.float(), V=V.float(), alpha=torch.ones(4), R=R, method="exponential", source_layer=S,
                     target_layer=T, positions=1, model=model_fingerprint(llama))
    return feats, V[:, 0], R


# ---------------------------------------------------------------- metrics, by hand


def test_auroc_equals_the_hand_counted_pair_share_with_ties_as_half() -> None:
    # pairs (p, n): 3>0, 3>2, 1>0, 1<2, 2>0, 2=2 → (5 + 0.5) / 6... counted: 1+1+1+0+1+0.5 = 4.5 of 6
    assert auroc([3.0, 1.0, 2.0], [0.0, 2.0]) == pytest.approx(4.5 / 6)
    assert auroc([5, 6], [1, 2, 3]) == 1.0
    assert auroc([1, 2], [5, 6]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    g = torch.Generator().manual_seed(1)
    p, n = torch.randn(37, generator=g), torch.randn(23, generator=g).round()
    brute = sum(float(a > b) + 0.5 * float(a == b) for a in p for b in n) / (37 * 23)
    assert auroc(p, n) == pytest.approx(brute)
    with pytest.raises(ValueError, match="negatives is empty"):
        auroc([1.0], [])


def test_threshold_flags_floor_fpr_n_clean_scores_and_the_requested_rate_on_fresh_ones() -> None:
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(5000, generator=g, dtype=torch.float64)
    for fpr in (0.0, 0.01, 0.05, 0.1):
        th = threshold_at_fpr(clean, fpr)
        assert int((clean > th).sum()) == int(fpr * 5000)
    fresh = torch.randn(200_000, generator=g, dtype=torch.float64)
    rate = flag_rate(fresh, threshold_at_fpr(clean, 0.01))
    assert abs(rate - 0.01) < 0.004  # sampling error of a 5000-score quantile ≈ 0.0014
    assert threshold_at_fpr([1.0, 2.0, 3.0], 0.0) == 3.0
    with pytest.raises(ValueError, match="0 ≤ fpr < 1"):
        threshold_at_fpr(clean, 1.0)


def test_ledoit_wolf_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.covariance")
    g = torch.Generator().manual_seed(3)
    for n, d in ((20, 50), (200, 10)):
        X = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
        cov, delta = ledoit_wolf(X)
        ref = sk.LedoitWolf(assume_centered=False).fit(X.numpy())
        assert delta == pytest.approx(ref.shrinkage_, rel=1e-8)
        torch.testing.assert_close(cov, torch.from_numpy(ref.covariance_), rtol=1e-8, atol=1e-10)


def test_mahalanobis_distance_by_hand() -> None:
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]], dtype=torch.float64)
    st = fit_mahalanobis(X)
    x = torch.tensor([[1.0 + 3.0, 2.0]], dtype=torch.float64)
    cov = torch.linalg.inv(st.precision)
    expect = float(((x - X.mean(0)) @ torch.linalg.inv(cov) @ (x - X.mean(0)).T).sqrt())
    assert float(st.distance(x)) == pytest.approx(expect)
    assert 0.0 <= st.shrinkage <= 1.0


# ---------------------------------------------------------------- activations


def test_prompt_activations_equal_the_models_own_hidden_states(llama: nn.Module, tok: Any) -> None:
    prompts = ["hi", "a much longer prompt about tea and cats"]
    acts = prompt_activations(llama, tok, prompts, [S, T, 4], positions=2, chat=True)
    for i, p in enumerate(prompts):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hs = llama(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (S, T):
            torch.testing.assert_close(acts[layer][i], hs[layer][0, -2:].double().mean(0), rtol=1e-5, atol=1e-5)
    # layer n_layers = the last layer's output; HF's hidden_states[n_layers] is it after the final norm
    last = prompt_activations(llama, tok, prompts, [4], positions=1, chat=True)[4]
    for i, p in enumerate(prompts):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hs = llama(input_ids=ids, output_hidden_states=True).hidden_states
            torch.testing.assert_close(llama.model.norm(last[i].float()), hs[4][0, -1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- planted detection


@pytest.mark.parametrize("detector,view", [("features", "source"), ("features", "target"), ("features", "both"),
                                           ("mahalanobis", "both")])
def test_prompts_carrying_the_planted_direction_are_detected(
    llama: nn.Module, tok: Any, planted: tuple[Features, torch.Tensor, float], detector: str, view: str
) -> None:
    feats, v_star, R = planted
    mon = Monitor.fit(llama, tok, feats, _prompts(40), fpr=0.05, detector=detector, view=view, chat=True)
    test = _prompts(20, offset=300)
    clean = mon.score(test)
    with steer(llama, (R * v_star).float(), layer=S):
        hot = mon.score(test)
    assert auroc(hot, clean) > 0.95
    assert float(mon.flag(test).double().mean()) <= 0.25  # clean prompts: about fpr
    assert flag_rate(hot, mon.threshold) >= 0.9


def test_source_view_ignores_a_perturbation_orthogonal_to_every_feature(
    llama: nn.Module, tok: Any, planted: tuple[Features, torch.Tensor, float]
) -> None:
    feats, _, R = planted
    mon = Monitor.fit(llama, tok, feats, _prompts(20), fpr=0.05, view="source", chat=True)
    V = feats.V.double()
    w = torch.randn(V.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w -= V @ (V.T @ w)
    test = _prompts(6, offset=7)
    with steer(llama, (3 * R * w / w.norm()).float(), layer=S):
        moved = mon.score(test)
    torch.testing.assert_close(moved, mon.score(test), rtol=1e-4, atol=1e-4)


def test_calibration_uses_out_of_fold_scores_at_the_requested_rate(llama: nn.Module, tok: Any,
                                                                   planted: tuple[Features, torch.Tensor, float]) -> None:
    feats, _, _ = planted
    clean = _prompts(40)
    mon = Monitor.fit(llama, tok, feats, clean, fpr=0.05, chat=True, folds=4)
    assert flag_rate(mon.calibration_scores, mon.threshold) == pytest.approx(2 / 40)
    acts = mon.activations(clean)
    oof = out_of_fold_scores(acts, detector="features", V=feats.V, U=feats.U, view="both", reduce="max", folds=4)
    torch.testing.assert_close(oof, mon.calibration_scores)
    # in-sample scores are smaller than out-of-fold ones (why calibration crosses folds)
    assert float(mon.score_activations(acts).mean()) < float(oof.mean())
    assert mon.with_fpr(0.1).threshold <= mon.threshold


def test_fit_validates_before_reading_prompts(llama: nn.Module, tok: Any, planted: tuple[Features, torch.Tensor, float]) -> None:
    feats, _, _ = planted
    clean = _prompts(12)
    with pytest.raises(ValueError, match="fpr=1.5"):
        Monitor.fit(llama, tok, feats, clean, fpr=1.5)
    with pytest.raises(ValueError, match="view='sideways'"):
        Monitor.fit(llama, tok, feats, clean, view="sideways")
    with pytest.raises(ValueError, match="needs features"):
        Monitor.fit(llama, tok, None, clean)
    with pytest.raises(ValueError, match="at least 10"):
        Monitor.fit(llama, tok, feats, clean[:6])
    no_u = Features(U=None, V=feats.V, alpha=feats.alpha, R=1.0, method="mean-diff", source_layer=S, target_layer=T)
    with pytest.raises(ValueError, match="no target directions"):
        Monitor.fit(llama, tok, no_u, clean, view="both")


def test_save_load_round_trip_refuses_overwrite_and_other_models(
    llama: nn.Module, tok: Any, planted: tuple[Features, torch.Tensor, float], tmp_path: Path
) -> None:
    feats, _, _ = planted
    test = _prompts(5, offset=3)
    for detector in ("features", "mahalanobis"):
        mon = Monitor.fit(llama, tok, feats, _prompts(20), fpr=0.1, detector=detector, chat=True)
        path = mon.save(tmp_path / f"{detector}.safetensors")
        back = Monitor.load(path, llama, tok)
        assert (back.threshold, back.fpr, back.detector, back.view) == (mon.threshold, mon.fpr, detector, mon.view)
        torch.testing.assert_close(back.score(test), mon.score(test))
        with pytest.raises(FileExistsError, match="already exists"):
            mon.save(path)
    with pytest.raises(ValueError, match="different model"):
        Monitor.load(path, tiny_model("llama", vocab=len(tok), seed=1), tok)
    with pytest.raises(ValueError, match="no model"):
        Monitor.load(path).score(test)


# ---------------------------------------------------------------- CLI


def test_cli_monitor_writes_scores_and_validates_before_loading(
    llama: nn.Module, tok: Any, planted: tuple[Features, torch.Tensor, float], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    feats, _, _ = planted
    mdir = tmp_path / "tiny"
    llama.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    fdir = feats.save(tmp_path / "feats")
    clean, prompts = tmp_path / "clean.txt", tmp_path / "p.txt"
    clean.write_text("\n".join(_prompts(20)) + "\n")
    prompts.write_text("\n".join(_prompts(3, offset=9)) + "\n")
    out = tmp_path / "scores.jsonl"
    base = ["monitor", str(fdir), "--model", str(mdir), "--clean", str(clean), "--prompts", str(prompts), "--chat", "yes"]
    assert main([*base, "--fpr", "0.1", "--out", str(out), "--save", str(tmp_path / "m.safetensors")]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == _prompts(3, offset=9)
    mon = Monitor.load(tmp_path / "m.safetensors")
    assert all(r["flagged"] == (r["score"] > mon.threshold) for r in rows)

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("melbo.models.loading.load_model", no_load)
    cases = ((["--fpr", "1"], "--fpr"), (["--out", str(out)], "already exists"),
             (["--clean", str(tmp_path / "none.txt")], "does not exist"),
             (["--save", str(tmp_path / "m.safetensors")], "already exists"))
    for extra, msg in cases:
        with pytest.raises(SystemExit):
            main([*base, *extra])
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["monitor", str(tmp_path / "nodir"), "--clean", str(clean), "--prompts", str(prompts)])
    assert "features directory" in capsys.readouterr().err
