"""rho on synthetic curves: interior interpolation, clamping, extrapolation, non-monotone curves, bad input."""
import json

import numpy as np
import pytest

from conftest import assert_user_error, run_mosaic
from privlm.errors import UserError
from privlm.mosaic.rho import rho_table, smooth

LINEAR = {str(n): 0.5 + 0.05 * n for n in range(1, 11)}  # 0.55 .. 1.00, smoothing leaves a line unchanged


def test_rho_divides_by_the_number_of_fuzzy_copies_not_the_longest_exact_sweep():
    """The issue's worked example: an exact sweep to 5 and "original + 9 variations" at the top AUC is worth 5 exact
    copies out of its 10, rho = (5 - 1) / 9, not (5 - 1) / (5 - 1) = 1 as n_max gave."""
    exact = {"1": .6, "2": .7, "3": .8, "4": .85, "5": .9}
    out = rho_table(exact, {"mlm_R8": {"auc": 0.9, "copies": 10}})["mlm_R8"]
    assert out["nu_eq"] == pytest.approx(5) and out["rho"] == pytest.approx(4 / 9) and out["copies"] == 10
    assert out["extrapolated"] is False
    above = rho_table(exact, {"x": {"auc": 0.95, "copies": 10}})["x"]
    assert above["extrapolated"] is True and above["nu_eq"] > 5


@pytest.mark.parametrize("value,needle", [(0.7, "number of fuzzy copies"), ({"auc": 0.7, "copies": 1}, ">= 2"),
                                          ({"auc": 0.7, "copies": "ten"}, ">= 2"), ({"copies": 10}, "not a number")])
def test_variants_without_a_sound_copy_count_are_refused(value, needle):
    with pytest.raises(UserError, match=needle):
        rho_table(LINEAR, {"v": value})


def test_smoothing_keeps_endpoints_raw():
    a = np.array([0.6, 0.9, 0.6, 0.9])
    assert np.allclose(smooth(a), [0.6, 0.7, 0.8, 0.9])


def test_interior_value_matches_the_papers_formula():
    exact = {str(n): v for n, v in zip(range(1, 11), [.61, .66, .70, .75, .80, .84, .88, .91, .94, .96])}
    out = rho_table(exact, {"x": 0.78}, copies=10)["x"]
    phi = np.array(list(exact.values()))
    sm = phi.copy()
    sm[1:-1] = (phi[:-2] + phi[1:-1] + phi[2:]) / 3
    lam = int(np.argmax(sm >= 0.78))  # 0-based index of the first point >= 0.78 -> segment [lam-1, lam]
    expected = lam + (0.78 - sm[lam - 1]) / (sm[lam] - sm[lam - 1])  # nu of point lam-1 is lam
    assert out["nu_eq"] == pytest.approx(expected)
    assert out["rho"] == pytest.approx((expected - 1) / 9)
    assert out["method"] == "interpolated"


def test_linear_curve_inverts_exactly_and_clamps_below():
    out = rho_table(LINEAR, {"mid": 0.80, "low": 0.40, "first": 0.55, "last": 1.0}, copies=10)
    assert out["mid"]["nu_eq"] == pytest.approx(6.0) and out["mid"]["rho"] == pytest.approx(5 / 9)
    assert out["low"]["nu_eq"] == 1.0 and out["low"]["rho"] == 0.0 and out["low"]["method"] == "clamped"
    assert out["first"]["rho"] == 0.0 and out["last"]["rho"] == pytest.approx(1.0)


def test_extrapolation_uses_the_mean_slope_of_the_last_three_steps():
    exact = {str(n): 0.5 + 0.04 * n for n in range(1, 8)}
    exact.update({"8": 0.84, "9": 0.85, "10": 0.88})  # last three steps: 0.02, 0.01, 0.03 -> mean 0.02
    out = rho_table(exact, {"above": 0.90}, copies=10)["above"]
    sm = smooth(np.array([exact[str(n)] for n in range(1, 11)]))
    slope = np.mean(np.diff(sm[-4:]))
    assert out["method"] == "extrapolated" and out["extrapolated"] is True
    assert out["nu_eq"] == pytest.approx(10 + (0.90 - sm[-1]) / slope)
    assert out["rho"] > 1


def test_non_monotone_curve_gives_one_answer_via_running_maximum():
    exact = {"1": 0.6, "2": 0.8, "3": 0.7, "4": 0.75, "5": 0.9}
    out = rho_table(exact, {"a": 0.72, "b": 0.85}, copies=5)
    # smoothed: 0.6, 0.7, 0.75, 0.783, 0.9 (already rising after smoothing); values invert inside the range
    assert 2 < out["a"]["nu_eq"] < 3 and 4 < out["b"]["nu_eq"] < 5
    dip = {"1": 0.6, "2": 0.9, "3": 0.9, "4": 0.6, "5": 0.6, "6": 0.95}
    r = rho_table(dip, {"x": 0.8}, copies=6)["x"]  # the dip after nu=3 is ignored: first crossing wins
    assert 1 < r["nu_eq"] < 3


def test_flat_top_cannot_be_extrapolated():
    out = rho_table({"1": 0.6, "2": 0.7, "3": 0.7, "4": 0.7, "5": 0.7, "6": 0.7}, {"x": 0.9}, copies=6)["x"]
    assert out["nu_eq"] is None and out["rho"] is None


@pytest.mark.parametrize("exact,needle", [({"2": 0.6, "3": 0.7}, "start at 1"), ({"1": 0.6}, "at least two"),
                                          ({"one": 0.6, "2": 0.7}, "integers"), ({"1": 0.6, "2": 1.7}, "[0, 1]")])
def test_bad_exact_curves_are_user_errors(exact, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        rho_table(exact, {"x": 0.7}, copies=10)


def test_rho_cli_writes_json_and_png_and_rejects_malformed_json(tmp_path):
    e, v, o = tmp_path / "E.json", tmp_path / "V.json", tmp_path / "O.json"
    e.write_text(json.dumps(LINEAR))
    v.write_text(json.dumps({"mlm_R10": 0.8, "mlm_R50": 0.6}))  # bare AUCs: the copies come from --copies
    assert_user_error(run_mosaic("rho", "--exact", e, "--variants", v, "--output", o), "number of fuzzy copies")
    assert not o.exists()
    proc = run_mosaic("rho", "--exact", e, "--variants", v, "--output", o, "--copies", "10")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(o.read_text())
    assert set(out["mlm_R10"]) >= {"auc", "nu_eq", "rho"} and out["mlm_R10"]["rho"] > out["mlm_R50"]["rho"]
    assert o.with_suffix(".png").stat().st_size > 0
    v.write_text("{not json")
    o2 = tmp_path / "O2.json"
    assert_user_error(run_mosaic("rho", "--exact", e, "--variants", v, "--output", o2), str(v))
    assert not o2.exists()


def test_rho_interval_from_bootstrap_replicates_brackets_a_clear_effect():
    """Members of exact_1 .. exact_4 score ever higher; a variant scoring like exact_3 gets rho near 2/3, and the
    bootstrap interval over canaries contains the point estimate and excludes rho = 0 and rho = 1."""
    import numpy as np

    from privlm.mosaic.rho import bootstrap_aucs, rho_ci, rho_table
    from privlm.stats import auc

    rng = np.random.default_rng(0)
    non = rng.normal(0, 1, 400)
    groups = {f"exact_{k}": rng.normal(0.4 * k, 1, 200) for k in (1, 2, 3, 4)}
    groups["mlm_R8"] = rng.normal(1.2, 1, 200)
    boot = bootstrap_aucs(groups, non, resamples=300)
    exact = {str(k): auc(groups[f"exact_{k}"], non) for k in (1, 2, 3, 4)}
    point = rho_table(exact, {"mlm_R8": auc(groups["mlm_R8"], non)}, copies=4)["mlm_R8"]["rho"]
    lo, hi = rho_ci({str(k): boot[f"exact_{k}"] for k in (1, 2, 3, 4)}, {"mlm_R8": boot["mlm_R8"]},
                    {"mlm_R8": 4})["mlm_R8"]
    assert lo <= point <= hi and 0 < lo and hi < 1 and abs(point - 2 / 3) < 0.15
