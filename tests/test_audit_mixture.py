"""The share of mismatched pairs and each pair's probability of being one (#25 item 7):
the estimators against their definitions and hand-worked cases, on mixtures whose truth is
known, and through ``clipkit audit``: the default rule, ``--max-flags``, the fallback for
small datasets, and the probability in every output."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.audit import AuditConfig, audit
from clipkit.audit.mixture import (
    LAMBDAS,
    estimate_mixture,
    grenander_density,
    null_cdf,
    stable_lambda,
    storey_shares,
)
from clipkit.errors import UsageError
from tests.helpers import TINY

runner = CliRunner()


def _mixture(pairs: int, share: float, separation: float, seed: int):
    """Scores of matched pairs N(-separation, 1) and mismatched ones N(0, 1), like the null."""
    rng = np.random.default_rng(seed)
    bad = int(share * pairs)
    scores = np.concatenate([rng.normal(-separation, 1, pairs - bad), rng.normal(0, 1, bad)])
    truth = np.arange(pairs) >= pairs - bad
    return scores, rng.normal(0, 1, 20_000), truth


def test_null_cdf_counts_the_unrelated_pairs_at_or_below_each_score():
    null = np.array([0.1, 0.2, 0.2, 0.7])
    # (count at or below + 0.5) / (4 + 1)
    assert null_cdf(np.array([0.0, 0.2, 0.5, 0.9]), null) == pytest.approx([0.1, 0.7, 0.7, 0.9])


def test_storey_shares_follow_their_definition():
    p = np.array([0.01, 0.02, 0.3, 0.6, 0.9])
    expected = [(p > lam).sum() / (5 * (1 - lam)) for lam in LAMBDAS]
    assert storey_shares(p) == pytest.approx(expected)


def test_the_smallest_lambda_no_larger_one_undercuts_is_chosen():
    """500 evenly spread p (mismatched) and 500 matched ones. Matched pairs near 0: every
    estimate is 0.5, so the first λ. Matched pairs spread over (0, 0.3): at λ = 0.25 the
    estimate is (375 + 83) / 750 = 0.611, 0.111 above λ = 0.30's 350 / 700 = 0.5, with a
    standard error of sqrt(350·(1/700 - 1/750)² + 108/750²) = 0.014: undercut; from 0.30
    on every estimate is 0.5, so λ = 0.30."""
    uniform = (np.arange(500) + 0.5) / 500
    near_zero = np.concatenate([uniform, np.full(500, 0.001)])
    assert LAMBDAS[stable_lambda(near_zero)] == pytest.approx(0.05)
    spread = np.concatenate([uniform, uniform * 0.3])
    assert storey_shares(spread)[LAMBDAS.tolist().index(0.25)] == pytest.approx(458 / 750)
    assert LAMBDAS[stable_lambda(spread)] == pytest.approx(0.30)
    assert storey_shares(spread)[stable_lambda(spread)] == pytest.approx(0.5)


def test_grenander_density_is_the_slopes_of_the_least_concave_majorant():
    # ECDF points (0, 0), (0.1, 0.5), (0.5, 0.75), (0.9, 1), (1, 1): (0.5, 0.75) lies on the
    # chord from (0.1, 0.5) to (0.9, 1), so the majorant's slopes are 5, 0.625 and 0.
    p = np.array([0.1, 0.1, 0.5, 0.9])
    assert grenander_density(p) == pytest.approx([5.0, 5.0, 0.625, 0.625])
    scattered = np.random.default_rng(0).uniform(size=500) ** 3
    density = grenander_density(scattered)
    order = np.argsort(scattered)
    assert np.all(np.diff(density[order]) <= 1e-12)  # non-increasing in p


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2])
def test_share_and_probabilities_on_a_separated_mixture(share):
    scores, null, truth = _mixture(1000, share, separation=3.0, seed=1)
    found = estimate_mixture(scores, null, seed=0)
    assert found.share == pytest.approx(share, rel=0.3)
    low, high = found.interval
    assert low <= found.share <= high and low <= share <= high
    order = np.argsort(scores)
    assert np.all(np.diff(found.probabilities[order]) >= -1e-12)  # more suspicious, more likely
    flagged = found.probabilities >= 0.5
    assert (flagged & truth).sum() / flagged.sum() >= 0.8  # precision of the default rule


def test_clean_data_has_almost_no_mismatched_share():
    scores, null, _ = _mixture(1000, 0.0, separation=3.0, seed=2)
    found = estimate_mixture(scores, null, seed=0)
    assert found.share <= 0.01 and (found.probabilities >= 0.5).sum() <= 5


# --- through clipkit audit -------------------------------------------------------------------


def _planted(folder, encoder, pairs: int, swapped: int, seed: int = 0) -> set[int]:
    """An embeddings folder of ``pairs`` image/caption rows; the first ``swapped`` pairs (an
    even number) have their captions swapped two by two."""
    generator = torch.Generator().manual_seed(seed)
    dim = encoder.embed_dim
    images = F.normalize(torch.randn(pairs, dim, generator=generator), dim=-1)
    noise = torch.randn(pairs, dim, generator=generator)
    captions = F.normalize(images + 0.6 / dim**0.5 * noise, dim=-1)
    texts = [f"caption {i}" for i in range(pairs)]
    for a in range(0, swapped, 2):
        captions[[a, a + 1]] = captions[[a + 1, a]]
        texts[a], texts[a + 1] = texts[a + 1], texts[a]
    stamp = store.ModelStamp(TINY, encoder.fingerprint, dim)
    rows = {
        "id": [f"img{i}" for i in range(pairs)] + [f"txt{i}" for i in range(pairs)],
        "uri": [f"/d/{i:04d}.png" for i in range(pairs)]
        + [f"/d/{i:04d}.txt" for i in range(pairs)],
        "kind": ["image"] * pairs + ["text"] * pairs,
        "text": [None] * pairs + texts,
    }
    folder.mkdir(parents=True)
    store.write_shard(
        store.shard_path(folder, 0), rows, torch.cat([images, captions]).numpy(), stamp
    )
    return set(range(swapped))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_encoder):
    folder = tmp_path_factory.mktemp("mixture") / "emb"
    return folder, _planted(folder, tiny_encoder, 400, 40)


def test_the_default_rule_flags_the_swaps_and_says_how_many_look_mismatched(planted):
    folder, swapped = planted
    result = audit(AuditConfig(data=folder, device="cpu"))  # no rule given: probability ≥ 0.5
    c = result.calibration
    assert c.statistic == "probability" and c.threshold == 0.5
    low, high = c.mismatched_interval
    assert c.mismatched_share == pytest.approx(0.1, rel=0.3)  # 40 of 400 swapped
    assert 0 < low <= 0.1 <= high
    flagged = {result.pairs.index(p) for p in result.flagged}
    assert flagged == swapped  # the separation is perfect: every swap, and only swaps
    ranked = sorted(range(400), key=lambda i: -result.pairs[i].probability)
    assert set(ranked[:40]) == swapped  # the swaps are the 40 most likely
    estimate, _, _ = c.mismatched_pairs(400)
    assert result.headline().startswith(f"About {estimate} of 400 pairs (")
    assert f"{len(flagged)} flagged with probability ≥ 0.5" in result.headline()
    probabilities = [p.probability for p in result.flagged]
    assert probabilities == sorted(probabilities, reverse=True)  # most likely first


def test_max_flags_keeps_the_most_likely_and_counts_the_rest(planted):
    folder, _ = planted
    every = audit(AuditConfig(data=folder, device="cpu"))
    assert len(every.flagged) == 40  # the default rule, probability ≥ 0.5, flags every swap
    capped = audit(AuditConfig(data=folder, device="cpu", max_flags=5))
    assert len(capped.flagged) == 5 and capped.calibration.capped == len(every.flagged) - 5
    assert [p.image for p in capped.flagged] == [p.image for p in every.flagged[:5]]
    assert "(the 5 most suspicious;" in capped.headline()


def test_the_probability_reaches_every_output(planted, tmp_path):
    folder, _ = planted
    base = ["audit", str(folder), "--device", "cpu", "--min-probability", "0.9"]
    result = runner.invoke(cli.app, [*base, "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "look mismatched" in said and "with probability ≥ 0.9" in said
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)
    assert all((float(r["probability"]) >= 0.9) == (r["flagged"] == "True") for r in rows)
    whole = json.loads(runner.invoke(cli.app, [*base, "--format", "json"]).stdout)
    assert "probability" in whole["pairs"][0] and whole["summary"]["mismatched_share"] > 0
    html = tmp_path / "r.html"
    shown = runner.invoke(cli.app, ["audit", str(folder), "--device", "cpu", "--html", str(html)])
    assert shown.exit_code == 0, shown.stderr
    assert "p(mismatched)" in html.read_text() and "look mismatched" in html.read_text()


@pytest.mark.parametrize("options", [{}, {"min_probability": 0.5}], ids=["default", "given"])
def test_small_datasets_fall_back_to_the_shuffled_pair_rule(tmp_path, tiny_encoder, options):
    _planted(tmp_path / "emb", tiny_encoder, 50, 2)
    result = audit(AuditConfig(data=tmp_path / "emb", device="cpu", **options))
    assert result.calibration.statistic == "mismatch" and "too few" in result.calibration.method
    assert {result.pairs.index(p) for p in result.flagged} >= {0, 1}


def test_the_shuffled_pair_rule_when_asked_for(planted):
    folder, swapped = planted
    result = audit(AuditConfig(data=folder, device="cpu", fpr=0.01))
    c = result.calibration
    assert c.statistic == "mismatch" and c.method == "shuffled-caption null at fpr 0.01"
    assert {result.pairs.index(p) for p in result.flagged} >= swapped


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_probability": 0.0}, "--min-probability"),
        ({"min_probability": 1.5}, "--min-probability"),
        ({"max_flags": -1}, "--max-flags"),
        ({"fpr": 0.01, "threshold": 0.2}, "not both"),
        ({"fpr": 0.01, "min_probability": 0.5}, "one of"),
    ],
)
def test_bad_rule_options_are_usage_errors(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        audit(AuditConfig(data=tmp_path, model=TINY, **options))
