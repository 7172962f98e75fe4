"""DP full fine-tuning under DeepSpeed ZeRO stages 2 and 3, on 1 and 2 CPU ranks (tests/dp/noise_ranks_helper.py):
each rank clips its own examples before any reduction (the update equals the per-example reference), and the noise
reaches every coordinate exactly once with variance sigma^2 C^2 (rank 0 draws it under ZeRO 0-2; under ZeRO-3 each
rank draws its own, independently, for the shard it owns)."""
import pytest
import torch

from conftest import run_script

SETUPS = [(2, 1), (2, 2), (3, 1), (3, 2)]  # (ZeRO stage, ranks)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The per-example loop on all 8 examples (one process, no DeepSpeed), at a C that clips some of them."""
    from test_clipping import batch
    from test_ghost import full_llama, naive

    model = full_llama(tiny_model_dir)
    ids, mask, labels = batch(b=8, seed=5)
    norms, _ = naive(model, ids, mask, labels, 1e9)
    C = float(norms.median())
    _, sums = naive(model, ids, mask, labels, C)
    names = {id(p): n for n, p in model.named_parameters()}
    return C, {names[id(p)]: s.flatten() / 8 for p, s in sums.items()}  # q*N = 8 examples expected


@pytest.fixture(scope="module")
def updates(tmp_path_factory, tiny_model_dir, reference):
    out = {}
    d = tmp_path_factory.mktemp("zero")
    for stage, ranks in SETUPS:
        f = d / f"z{stage}w{ranks}.pt"
        p = run_script("tests/dp/noise_ranks_helper.py", str(tiny_model_dir), str(f), str(stage), "full",
                       repr(reference[0]), launcher="deepspeed", ranks=ranks)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        out[stage, ranks] = torch.load(f, weights_only=True)
    return out


@pytest.mark.parametrize("stage,ranks", SETUPS)
def test_clipped_update_equals_the_per_example_reference(updates, reference, stage, ranks):
    got, ref = updates[stage, ranks]["clipped"], reference[1]
    assert got.keys() == ref.keys() and len(got) > 10  # every trainable weight, embeddings included
    worst = max((got[n].double() - ref[n]).abs().max().item() for n in ref)
    scale = max(r.abs().max().item() for r in ref.values())
    assert worst <= 1e-5 * scale, (worst, scale)


@pytest.mark.parametrize("stage,ranks", SETUPS)
def test_noise_variance_is_sigma_c_squared_per_coordinate(updates, stage, ranks):
    noise = torch.cat(list(updates[stage, ranks]["noise"].values())) * 8  # sigma * C = 1, divided by q*N = 8
    assert noise.numel() > 50_000
    assert abs(noise.std().item() - 1.0) < 0.02 and abs(noise.mean().item()) < 0.02
    for u in updates[stage, ranks]["noise"].values():  # no weight left without noise or with a double dose
        if u.numel() >= 2000:
            assert abs(u.std().item() * 8 - 1.0) < 0.15


def test_zero2_noise_is_drawn_once_not_per_rank(updates):
    """rank 0 draws the one noise of a step: one and two ranks give the same draw (same seed, same key)."""
    for n, u in updates[2, 1]["noise"].items():
        torch.testing.assert_close(u, updates[2, 2]["noise"][n], rtol=0, atol=1e-4)


def test_zero3_shards_get_independent_noise(updates):
    """Each rank's shard has its own stream: the two halves of a weight are uncorrelated, not copies."""
    u = max(updates[3, 2]["noise"].values(), key=torch.Tensor.numel)
    half = (u.numel() + 1) // 2
    a, b = u[:u.numel() - half], u[half:]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.05, corr
