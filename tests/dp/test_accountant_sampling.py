import math

import pytest

from privlm.dp import accountant
from privlm.dp.sampling import PoissonBatches
from privlm.errors import UserError


def test_calibrated_sigma_spends_the_target_epsilon():
    q, steps, delta = 4096 / 180000, 439, 5e-7  # Yu et al.'s setting
    for target in (2.86, 5.94):
        sigma = accountant.noise_multiplier(target, q, steps, delta)
        eps = accountant.epsilon(sigma, q, steps, delta)
        assert target - 0.05 <= eps <= target + 1e-9, (target, sigma, eps)
    assert accountant.noise_multiplier(2.86, q, steps, delta) > accountant.noise_multiplier(5.94, q, steps, delta)


def test_rdp_is_looser_than_prv_and_more_steps_spend_more():
    q, delta = 0.01, 1e-5
    prv, rdp = accountant.epsilon(1.0, q, 1000, delta, "prv"), accountant.epsilon(1.0, q, 1000, delta, "rdp")
    assert prv < rdp
    assert accountant.epsilon(1.0, q, 2000, delta) > prv
    assert accountant.epsilon(0.0, q, 10, delta) == math.inf


@pytest.mark.parametrize("kw,needle", [
    (dict(target_epsilon=0.0), "target_epsilon"), (dict(delta=1.5), "target_delta"), (dict(delta=0.0), "target_delta"),
    (dict(sample_rate=0.0), "sample_rate"), (dict(steps=0), "steps")])
def test_bad_privacy_parameters(kw, needle):
    args = dict(target_epsilon=8.0, sample_rate=0.01, steps=100, delta=1e-5) | kw
    with pytest.raises(UserError, match=needle):
        accountant.noise_multiplier(**args)


def test_ledger_roundtrip_and_update():
    led = accountant.Ledger(sample_rate=0.01, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    led.step(500)
    e = led.update_epsilon()
    again = accountant.Ledger.from_dict(led.to_dict())
    assert again == led and e == pytest.approx(accountant.epsilon(1.0, 0.01, 500, 1e-5))


def test_poisson_mean_batch_is_qn_and_ranks_partition_it():
    n, q = 2000, 0.02
    sizes = [len(PoissonBatches(n, q, 1).selected(s)) for s in range(300)]
    mean = sum(sizes) / len(sizes)
    sd = math.sqrt(n * q * (1 - q) / len(sizes))
    assert abs(mean - q * n) < 4 * sd, (mean, q * n)
    assert len(set(sizes)) > 5, "batch sizes vary"
    full = PoissonBatches(n, q, 1).selected(7)
    r0 = [i for mb in PoissonBatches(n, q, 1, rank=0, world=2, micro_batch_size=8).micro_batches(7) for i in mb]
    r1 = [i for mb in PoissonBatches(n, q, 1, rank=1, world=2, micro_batch_size=8).micro_batches(7) for i in mb]
    assert sorted(i for i in r0 + r1 if i is not None) == sorted(full)
    assert all(len(mb) == 8 for mb in PoissonBatches(n, q, 1, world=2, micro_batch_size=8).micro_batches(7))


def test_shuffled_batches_warn():
    with pytest.warns(UserWarning, match="Poisson"):
        PoissonBatches(100, 0.1, 0, shuffle_fixed=True)
