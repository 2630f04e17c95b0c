"""The DDP hook on two real gloo processes against a one-process computation of the same exchange.

Two spawned processes train a small linear model for a few SGD steps under each scheme and save, per step, the
gradient DDP handed back and the weights. The parent recomputes everything in one process: each rank's local
gradient (its slice of the batch), each rank's codes (the rank's seeded generator, its residual, the max of the
ranks' scalers; for onebit's rotation, the payload key of the seed, the rank and the step), and the average in
rank order. The hook must give that average bit for bit on both ranks, so the
replicas stay identical; ``fp32`` must also equal the one-process full-batch gradient (float summation order only).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lowbit import comm
from lowbit.comm.hook import _RANK_STRIDE, payload_key
from lowbit.comm.schemes import make_scheme
from lowbit.functional.elias import elias_bits

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD, STEPS, FEATURES, CLASSES, BATCH, SEED = 2, 3, 300, 5, 16, 7
SETTINGS = [("fp32", {}), ("fp16", {}), ("bf16", {}), ("onebit", {"block": 128}),
            ("onebit", {"block": 128, "error_feedback": False}), ("onebit", {"block": 128, "error_feedback": 0.25}),
            ("onebit", {"block": 128, "rotate": False}), ("onebit", {"block": 128, "rotate": False,
                                                                      "error_feedback": True}),
            ("onebit", {"block": 100, "rotate": False, "error_feedback": 0.25}),
            ("qsgd", {"levels": 16, "block": 256}),
            ("terngrad", {"block": 256}), ("dorefa", {"bits": 4, "block": 256})]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, CLASSES)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, FEATURES, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator)


def _bucket_order(model: torch.nn.Module, step: int) -> list[torch.nn.Parameter]:
    """The parameters in DDP's single bucket: registration order on the first step; after it DDP rebuilds the
    bucket in the order the gradients became ready in backward (the reverse, for one Linear layer)."""
    order = list(model.parameters())
    return order if step == 0 else order[::-1]


def _flat_grad(model: torch.nn.Module, step: int) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in _bucket_order(model, step)])


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    records = {}
    for name, options in SETTINGS:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        handle = comm.register(model, name, seed=SEED, **options)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        grads, weights = [], []
        for step in range(STEPS):
            x, y = _batch(step)
            part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[part]), y[part]).backward()
            grads.append(_flat_grad(model.module, step).clone())
            optimizer.step()
            weights.append([p.detach().clone() for p in model.module.parameters()])
        records[(name, tuple(sorted(options.items())))] = {
            "grads": grads, "weights": weights, "bytes_sent": handle.bytes_sent,
            "bytes_uncompressed": handle.bytes_uncompressed, "payload_bits": handle.payload_bits}
    torch.save(records, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def _reference(name: str, options: dict) -> tuple[list[torch.Tensor], int, int]:
    """Per step, the averaged gradient computed in one process; and the bytes and bits each rank sends."""
    options = dict(options)
    # the feedback fraction β (register's docstring): by default 1 for onebit, 0.25 for onebit with rotate=False,
    # 0 for the others; False is 0
    default = (1.0 if options.get("rotate", True) else 0.25) if name == "onebit" else 0.0
    error_feedback = float(options.pop("error_feedback", default))
    scheme = make_scheme(name, **options)
    models = [_model() for _ in range(WORLD)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    generators = [torch.Generator().manual_seed(SEED + _RANK_STRIDE * r) for r in range(WORLD)]
    residuals = [None] * WORLD
    averages, sent, bits = [], 0, 0
    for step in range(STEPS):
        x, y = _batch(step)
        local = []
        for r, model in enumerate(models):
            part = slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD)
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[part]), y[part]).backward()
            g = _flat_grad(model, step)
            if error_feedback and residuals[r] is not None:
                g = g + torch.cat([residuals[r][id(p)] for p in _bucket_order(model, step)])
            local.append(g)
        segments = [p.numel() for p in _bucket_order(models[0], step)]
        scalers = None
        if scheme.shares_scalers:
            scalers = torch.stack([scheme.scalers(e, segments) for e in local]).amax(dim=0)
            sent += 4 * scalers.numel()
        decoded, lengths = [], []
        for r, e in enumerate(local):
            # one bucket, so the exchange's index is the step
            payload, value, info = scheme.encode(e, generators[r], scalers, segments, payload_key(SEED, r, step))
            decoded.append(value)
            lengths.append(payload.numel())
            if r == 0:
                bits += info
            if error_feedback:
                order = _bucket_order(models[r], step)
                kept = error_feedback * (e - value)
                residuals[r] = dict(zip(map(id, order), kept.split([p.numel() for p in order])))
        sent += max(lengths) + (8 if scheme.variable_size else 0)
        total = torch.zeros_like(local[0])
        for value in decoded:
            total += value
        average = total / WORLD
        averages.append(average)
        for model, optimizer in zip(models, optimizers):
            # unflatten the average into each model's .grad, then step
            offset = 0
            for p in _bucket_order(model, step):
                p.grad = average[offset:offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            optimizer.step()
    return averages, sent, bits


@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{o}" for n, o in SETTINGS])
def test_two_processes_equal_the_one_process_exchange(ranks, name, options):
    """Both ranks get the one-process average of the decoded codes, bit for bit, every step; weights agree."""
    key = (name, tuple(sorted(options.items())))
    expected, sent, bits = _reference(name, options)
    for step in range(STEPS):
        for r in range(WORLD):
            assert torch.equal(ranks[r][key]["grads"][step], expected[step]), (name, step, r)
        for a, b in zip(ranks[0][key]["weights"][step], ranks[1][key]["weights"][step]):
            assert torch.equal(a, b)
    numel = FEATURES * CLASSES + CLASSES
    assert ranks[0][key]["bytes_uncompressed"] == 4 * numel * STEPS
    assert ranks[0][key]["bytes_sent"] == sent
    assert ranks[0][key]["payload_bits"] == bits


def test_fp32_exchange_equals_the_full_batch_gradient(ranks):
    """Lossless setting: the fp32 exchange of two half batches gives the one-process gradient of the whole batch
    (up to float summation order), at every step of the same trajectory."""
    key = ("fp32", ())
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        x, y = _batch(step)
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        torch.testing.assert_close(ranks[0][key]["grads"][step], _flat_grad(model, step), rtol=1e-5, atol=1e-7)
        optimizer.step()


def test_compressed_schemes_send_fewer_bytes(ranks):
    """The byte counters see the compression: fp16 exactly 2×; onebit ≥ 24× and terngrad ≥ 14× fewer bytes than
    fp32 all-reduce here (1500 weights in blocks of 128 or 256, and the 5 biases in a block of their own, whose
    scale costs as much as 32 signs); qsgd's padded stream is at least its Elias bits."""
    def ratio(name, options):
        record = ranks[0][(name, tuple(sorted(options.items())))]
        return record["bytes_uncompressed"] / record["bytes_sent"]
    assert ratio("onebit", {"block": 128}) >= 24
    assert ratio("terngrad", {"block": 256}) >= 14
    assert ratio("fp16", {}) == 2.0
    record = ranks[0][("qsgd", (("block", 256), ("levels", 16)))]
    assert record["bytes_sent"] >= record["payload_bits"] / 8
    assert elias_bits([0]) == 1  # the bit count the handle adds up starts from the gamma code's definition


def _bucket_worker(rank: int, store: str, out: str) -> None:
    """Three layers in buckets of about 4 kB, so that every step makes several exchanges (and DDP rebuilds them
    after the first); rotated onebit with full feedback; saves the weights and the exchange count."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, CLASSES))
    model = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.004)
    handle = comm.register(model, "onebit", seed=SEED)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = _batch(step)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[part]), y[part]).backward()
        optimizer.step()
    torch.save({"weights": [p.detach() for p in net.parameters()], "exchanges": handle.exchanges},
               os.path.join(out, f"buckets{rank}.pt"))
    dist.destroy_process_group()


def test_ranks_agree_on_rotations_across_several_buckets(tmp_path):
    """With several buckets per step, both ranks derive the same payload keys (a rank decoding another's payload
    with the wrong rotation would average a different gradient, and the replicas would part): weights identical
    after every step's exchanges, and more exchanges than steps."""
    mp.spawn(_bucket_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"buckets{r}.pt") for r in range(WORLD)]
    assert ranks[0]["exchanges"] == ranks[1]["exchanges"] > STEPS
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]))


def test_an_overflowed_step_leaves_the_residual_as_it_was(tmp_path):
    """A gradient with inf (a GradScaler's overflow step, which the optimizer skips) goes out non-finite, so the
    scaler sees it, and the error-feedback residual keeps its last finite value instead of turning NaN."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        layer = torch.nn.Linear(40, 3)
        handle = comm.register(torch.nn.parallel.DistributedDataParallel(layer), "onebit", block=16)
        parameters = list(layer.parameters())
        handle.exchange(torch.randn(123), parameters)
        kept = {k: v.clone() for k, v in handle.residuals.items()}
        assert all(bool(v.abs().sum() > 0) for v in kept.values())
        overflowed = torch.randn(123)
        overflowed[5] = float("inf")
        assert not bool(torch.isfinite(handle.exchange(overflowed, parameters)).all())
        assert all(torch.equal(handle.residuals[k], v) for k, v in kept.items())
        assert bool(torch.isfinite(handle.exchange(torch.randn(123), parameters)).all())
    finally:
        dist.destroy_process_group()


def test_register_refuses_a_plain_model_and_bad_options():
    """register names what is wrong: a model that is not DDP, an unknown scheme, an option the scheme lacks."""
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        comm.register(torch.nn.Linear(2, 2), "onebit")
    with pytest.raises(ValueError, match="'zip'"):
        comm.make_scheme("zip")
    with pytest.raises(ValueError, match="levels"):
        comm.make_scheme("onebit", levels=4)
    with pytest.raises(ValueError, match="block"):
        comm.make_scheme("qsgd", block=0)
    with pytest.raises(ValueError, match="power-of-two block, got 100"):
        comm.make_scheme("onebit", block=100)
    with pytest.raises(ValueError, match="rotate must be True or False, got 'no'"):
        comm.make_scheme("onebit", rotate="no")
    onebit = comm.make_scheme("onebit")
    with pytest.raises(ValueError, match="error_feedback must be a bool or a fraction in \\[0, 1\\], got 1.5"):
        comm.hook._feedback_fraction(onebit, 1.5)
    with pytest.raises(ValueError, match="got nan"):
        comm.hook._feedback_fraction(onebit, float("nan"))
    # numpy scalars are numbers too; None is each scheme's default (register's docstring)
    assert comm.hook._feedback_fraction(onebit, np.float32(0.5)) == 0.5
    assert comm.hook._feedback_fraction(onebit, np.True_) == 1.0
    defaults = {name: comm.hook._feedback_fraction(comm.make_scheme(name, **options), None)
                for name, options in [("onebit", {}), ("qsgd", {}), ("terngrad", {}), ("fp16", {})]}
    assert defaults == {"onebit": 1.0, "qsgd": 0.0, "terngrad": 0.0, "fp16": 0.0}
    assert comm.hook._feedback_fraction(comm.make_scheme("onebit", rotate=False), None) == 0.25


def test_fit_refuses_compression_without_ddp():
    """lowbit.qat.fit with gradient_compression outside torch.distributed is an error, not a silent no-op."""
    from lowbit.flows.qat_train import fit

    with pytest.raises(ValueError, match="gradient_compression"):
        fit(torch.nn.Linear(4, 2), (torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4,
            progress=False, gradient_compression="onebit")


@pytest.mark.slow
def test_example_script_under_torchrun(tmp_path):
    """examples/ddp_compressed.py under torchrun (2 processes, 1024 images): the ranks end with identical weights,
    and rank 0's result.json holds the accuracy and bytes at onebit's ratio (≥ 25× fewer than fp32)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).resolve().parents[2] / "examples" / "ddp_compressed.py"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), "--scheme", "onebit",
               "--epochs", "1", "--images", "1024", "--out", str(tmp_path)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    result = json.loads((tmp_path / "result.json").read_text())
    sent = result["communication"]
    assert sent["buckets"] == 1024 // 128 and sent["bytes_uncompressed"] / sent["bytes_sent"] >= 25
    assert 0 < result["history"][-1]["accuracy"] <= 100
