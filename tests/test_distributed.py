"""Cross-device negatives on real processes (2 ranks, gloo, CPU): the loss and its gradients against one process
over the concatenated batch (exact for the differentiable gather, 1/W for the detached one, DPR, Karpukhin et al.,
2020, §3.2), uneven batches, a world of one, mismatched inputs that raise on every rank instead of hanging, the
Conan CBB loss (Li et al., 2024, arXiv:2408.15710, §2.3), and ``launch`` (a DDP run of the course encoder, a
failing rank, a timeout).

Raw-tensor checks run in one ``torch.multiprocessing`` start of ``_loss_worker`` (a module-level function, as
spawn needs); the encoder checks reuse one ``launch``."""

import faulthandler
import math
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from course_lib.distributed import WorkerError, cross_gpu_balance_loss_across_ranks, launch, shard_sizes
from course_lib.losses import (
    GATHERS,
    cross_device_in_batch_loss,
    cross_gpu_balance_loss,
    in_batch_softmax_loss,
    similarity_logits,
)

W, DIN, D, K, TAU = 2, 6, 5, 2, 0.1
SPLITS = {"even": 6, "uneven": 5}  # global batch sizes: 3 + 3 and 3 + 2 rows
NEGATIVES = ("none", "per-query", "shared")
F64 = torch.float64


def _inputs():
    """The global batch every rank builds alike: queries, positives, per-query negatives (N, K, ·) and each
    rank's shared negatives (rank r holds r + 2 rows), as encoder inputs of width DIN."""
    g = torch.Generator().manual_seed(7)
    n = max(SPLITS.values())
    return {"q": torch.randn(n, DIN, generator=g, dtype=F64), "d": torch.randn(n, DIN, generator=g, dtype=F64),
            "n": torch.randn(n, K, DIN, generator=g, dtype=F64),
            "shared": [torch.randn(r + 2, DIN, generator=g, dtype=F64) for r in range(W)]}


def _encoder() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(DIN, D, dtype=F64)  # the "encoder" every rank shares, as DDP keeps it


def _loss_worker(rank: int, init_file: str, out: str) -> None:
    faulthandler.dump_traceback_later(120, exit=True)  # a stuck rank prints where it is stuck, then exits
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=W,
                            timeout=timedelta(seconds=30))
    x, model, results = _inputs(), DDP(_encoder()), {}
    for split, n in SPLITS.items():
        sizes = shard_sizes(n, W)
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for kind in NEGATIVES:
            for gather in GATHERS:
                model.zero_grad(set_to_none=True)
                negatives = {"none": None, "per-query": x["n"][rows], "shared": x["shared"][rank]}[kind]
                loss = cross_device_in_batch_loss(model(x["q"][rows]), model(x["d"][rows]),
                                                  None if negatives is None else model(negatives), temperature=TAU,
                                                  gather=gather)
                loss.backward()  # DDP averages the gradients here
                results[gather, split, kind] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    # CBB across ranks: the same queries and positives everywhere, each rank its own negatives
    model.zero_grad(set_to_none=True)
    loss = cross_gpu_balance_loss_across_ranks(model(x["q"]), model(x["d"]), model(x["shared"][rank]), temperature=TAU)
    loss.backward()
    results["cbb"] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    # bad inputs on one rank: every rank must raise, quickly, instead of waiting in the gather
    q, d = torch.randn(3, D, dtype=F64), torch.randn(3, D, dtype=F64)
    wide = torch.randn(3, D + 1, dtype=F64)
    nan = d.clone().index_fill_(0, torch.tensor([1]), math.nan)
    bad_cases = {"width": (wide, wide, None) if rank == 1 else (q, d, None),
                 "nan": (q, nan if rank == 1 else d, None),
                 "negatives on one rank": (q, d, torch.randn(2, D, dtype=F64) if rank == 0 else None)}
    bad_cases["cbb queries differ"] = (q + rank, d, torch.randn(2, D, dtype=F64))
    for name, args in bad_cases.items():
        t0 = time.perf_counter()
        loss = cross_gpu_balance_loss_across_ranks if name.startswith("cbb") else cross_device_in_batch_loss
        try:
            loss(*args, temperature=TAU)
            results[name] = ("no error", time.perf_counter() - t0)
        except ValueError as e:
            results[name] = (str(e), time.perf_counter() - t0)
    torch.save(results, f"{out}/rank{rank}.pt")
    del model  # before the group: DDP's reducer holds it, and a gloo group freed after destroy can hang (torch 2.13)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    ctx = mp.start_processes(_loss_worker, args=(str(folder / "init"), str(folder)), nprocs=W, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 300  # a backstop: a rank stuck in a collective raises after the 30 s timeout
    while not ctx.join(timeout=1):  # re-raises a rank's exception with its traceback
        if time.monotonic() > deadline:
            codes = [p.exitcode for p in ctx.processes]
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-process loss checks did not finish within 300 s (exit codes {codes})")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(W)]


def _reference(split: str, kind: str):
    """One process over the concatenated batch: the global loss, its per-query CE terms and its gradients."""
    x, model = _inputs(), _encoder()
    n = SPLITS[split]
    negatives = {"none": None, "per-query": x["n"][:n], "shared": torch.cat(x["shared"])}[kind]
    logits = similarity_logits(model(x["q"][:n]), model(x["d"][:n]), None if negatives is None else model(negatives),
                               temperature=TAU)
    terms = F.cross_entropy(logits, torch.arange(n), reduction="none")  # (n,)
    loss = terms.mean()
    loss.backward()
    return loss.item(), terms.detach(), [p.grad for p in model.parameters()]


def _max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("kind", NEGATIVES)
def test_two_ranks_match_one_process(rank_results, split, kind):
    loss, terms, grads = _reference(split, kind)
    sizes = shard_sizes(SPLITS[split], W)
    # differentiable gather: rank r returns W·B_r/N × its queries' mean CE; the mean over ranks is the global
    # loss and the DDP-averaged gradient is exactly the global gradient
    per_rank = [rank_results[r]["differentiable", split, kind] for r in range(W)]
    starts = [sum(sizes[:r]) for r in range(W)]
    for r, (value, _) in enumerate(per_rank):
        share = W * sizes[r] / sum(sizes) * terms[starts[r] : starts[r] + sizes[r]].mean().item()
        assert value == pytest.approx(share, rel=1e-12, abs=1e-12)
    assert sum(v for v, _ in per_rank) / W == pytest.approx(loss, rel=1e-12)
    print(f"{split}/{kind}: differentiable max |Δgrad| {max(_max_diff(g, grads) for _, g in per_rank):.1e}, "
          f"detached {max(_max_diff(rank_results[r]['detached', split, kind][1], [g / W for g in grads]) for r in range(W)):.1e}")
    for _, rank_grads in per_rank:
        assert _max_diff(rank_grads, grads) < 1e-12
    # detached gather: every rank computes the global loss; DDP's average is 1/W of the global gradient
    for r in range(W):
        value, rank_grads = rank_results[r]["detached", split, kind]
        assert value == pytest.approx(loss, rel=1e-12)
        assert _max_diff(rank_grads, [g / W for g in grads]) < 1e-12
        assert _max_diff(rank_grads, grads) > 1e-3  # the 1/W factor is really there


def test_cbb_across_ranks_matches_one_process(rank_results):
    x, model = _inputs(), _encoder()
    loss = cross_gpu_balance_loss(model(x["q"]), model(x["d"]), [model(t) for t in x["shared"]], temperature=TAU)
    loss.backward()
    for r in range(W):
        value, grads = rank_results[r]["cbb"]
        assert value == pytest.approx(loss.item(), rel=1e-12)
        assert _max_diff(grads, [p.grad for p in model.parameters()]) < 1e-12


@pytest.mark.parametrize("case, words", [("width", "disagree on the embedding width"),
                                         ("nan", "rank 1 failed its checks"),
                                         ("negatives on one rank", "disagree on the negatives"),
                                         ("cbb queries differ", "q and pos differ across ranks")])
def test_bad_input_on_one_rank_raises_on_every_rank(rank_results, case, words):
    for r in range(W):
        message, seconds = rank_results[r][case]
        expected = "non-finite" if case == "nan" and r == 1 else words  # rank 1 raises its own error
        assert expected in message, message
        assert seconds < 10, f"rank {r} took {seconds:.1f} s to fail: it waited for the other rank"


# ---------------------------------------------------------------------------------------------------------
# a world of one


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("gather", GATHERS)
def test_world_of_one_is_the_in_batch_loss(gather, tmp_path):
    q, d, n = _randn(4, 3, seed=1), _randn(4, 3, seed=2), _randn(4, 2, 3, seed=3)
    expected = [in_batch_softmax_loss(q, d, neg, temperature=TAU) for neg in (None, n)]
    got = [cross_device_in_batch_loss(q, d, neg, temperature=TAU, gather=gather) for neg in (None, n)]
    assert not dist.is_initialized()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        got = [cross_device_in_batch_loss(q, d, neg, temperature=TAU, gather=gather) for neg in (None, n)]
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_unknown_gather_mode_raises():
    with pytest.raises(ValueError, match="gather must be one of"):
        cross_device_in_batch_loss(_randn(2, 3, seed=1), _randn(2, 3, seed=2), gather="all")


def test_shard_sizes():
    assert shard_sizes(7, 2) == [4, 3] and shard_sizes(8, 2) == [4, 4] and sum(shard_sizes(10, 3)) == 10


# ---------------------------------------------------------------------------------------------------------
# the cross-GPU batch balance loss on simulated devices


def _cbb_by_formula(q, pos, union):
    """Conan's eq.: −(1/n) Σ_i log[e^{s⁺/τ} / (e^{s⁺/τ} + Σ_j e^{s⁻_ij/τ})], with explicit exponentials."""
    q, pos, union = F.normalize(q, dim=-1), F.normalize(pos, dim=-1), F.normalize(union, dim=-1)
    positive = torch.exp((q * pos).sum(-1) / TAU)  # (n,)
    scores = q @ union.T if union.dim() == 2 else (q[:, None, :] * union).sum(-1)  # (n, M) or (n, K)
    return -torch.log(positive / (positive + torch.exp(scores / TAU).sum(-1))).mean()


@pytest.mark.parametrize("shape", [(7, 4), (5, 7, 4)], ids=["shared", "per-query"])
@pytest.mark.parametrize("devices", [1, 2, 3])
def test_cbb_equals_infonce_over_the_union_of_negatives(shape, devices):
    q, pos, union = (_randn(5, 4, seed=1).requires_grad_(), _randn(5, 4, seed=2).requires_grad_(),
                     _randn(*shape, seed=3).requires_grad_())
    shards = torch.tensor_split(union, devices, dim=len(shape) - 2)  # disjoint shards, one per device
    loss = cross_gpu_balance_loss(q, pos, list(shards), temperature=TAU)
    grads = torch.autograd.grad(loss, (q, pos, union))
    expected = _cbb_by_formula(q, pos, union)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    for got, want in zip(grads, torch.autograd.grad(expected, (q, pos, union))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # in_batch=True adds the other positives as negatives: exactly the in-batch softmax over the union
    loss_ib = cross_gpu_balance_loss(q, pos, list(shards), temperature=TAU, in_batch=True)
    assert torch.equal(loss_ib, in_batch_softmax_loss(q, pos, torch.cat(shards, dim=len(shape) - 2), temperature=TAU))
    assert loss_ib > loss  # more negatives in every row's denominator


@pytest.mark.parametrize("negatives, error", [([], TypeError), (torch.zeros(3, 4), TypeError),
                                              ([torch.zeros(3, 4), torch.zeros(5, 1, 4)], ValueError),
                                              ([torch.zeros(3, 5)], ValueError)])
def test_cbb_bad_negatives_raise(negatives, error):
    with pytest.raises(error):
        cross_gpu_balance_loss(torch.randn(5, 4), torch.randn(5, 4), negatives)


# ---------------------------------------------------------------------------------------------------------
# launch: DDP training of the course encoder


@pytest.fixture(scope="module")
def course():
    """The FAST preset, its data and tokenizer (loaded once for the encoder checks)."""
    from course_lib.config import get_config
    from course_lib.data import load_dataset
    from course_lib.tokenizer import load_tokenizer

    cfg = get_config("fast")
    data = load_dataset("wordnet", cfg.preset)
    return cfg, data, load_tokenizer(data, cfg.vocab_size)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    lines: list[str] = []
    metrics = launch(W, ["--grad-check", "--steps", "3", "--batch-size", "4", "--log-every", "1"], out,
                     timeout_s=300, log=lines.append)
    return out, metrics, lines


def test_launch_trains_and_writes_metrics_and_checkpoint(ddp_run, course):
    from course_lib.models import make_encoder
    from course_lib.train import load_checkpoint

    out, metrics, lines = ddp_run
    assert metrics["world_size"] == W and metrics["per_rank_batch"] == 4 and metrics["global_batch"] == 8
    assert metrics["steps"] == 3 and len(metrics["losses"]) == 3 and all(math.isfinite(v) for v in metrics["losses"])
    assert metrics["examples_per_s"] > 0 and metrics["backend"] == "gloo"
    assert any("[rank 0] step 3/3" in line for line in lines)  # the log was streamed to the callback
    cfg, _, tokenizer = course
    assert load_checkpoint(out / "model.pt", make_encoder(cfg, tokenizer))["step"] == 3


def test_ddp_encoder_gradients_match_one_process(ddp_run, course):
    from course_lib.in_batch import pair_batches
    from course_lib.models import make_encoder

    out, _, _ = ddp_run
    saved = torch.load(out / "grad_check.pt", weights_only=True)
    cfg, data, tokenizer = course
    assert saved["preset"] == cfg.preset and saved["world_size"] == W
    model = make_encoder(cfg, tokenizer)
    model.load_state_dict(saved["state"])
    model.eval()
    for split, idx in saved["indices"].items():
        batch = next(pair_batches(data, tokenizer, [idx], cfg))
        model.zero_grad(set_to_none=True)
        loss = in_batch_softmax_loss(model(**batch["q"]), model(**batch["d"]), temperature=saved["temperature"])
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        scale = max(float(g.abs().max()) for g in grads.values())
        for gather, factor in (("differentiable", 1.0), ("detached", 1.0 / W)):
            result = saved["results"][f"{gather}/{split}"]
            assert result["sizes"] == shard_sizes(len(idx), W)
            assert sum(result["losses"]) / W == pytest.approx(loss.item(), rel=1e-5)
            worst = max(float((result["grads"][n] - factor * g).abs().max()) for n, g in grads.items())
            print(f"{gather}/{split}: max |Δgrad| {worst:.2e}, max |grad| {scale:.2e}")
            assert worst <= 1e-4 * scale, f"{gather}/{split}: max |Δgrad| {worst:.2e} (max |grad| {scale:.2e})"


def test_launch_surfaces_the_failing_ranks_traceback(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 failed first") as info:
        launch(W, ["--steps", "2", "--batch-size", "2", "--crash-rank", "1", "--timeout", "20"], tmp_path,
               timeout_s=240, log=lambda line: None)
    assert "Traceback" in str(info.value) and "fails on purpose" in str(info.value)
    assert time.monotonic() - t0 < 200  # the other rank did not wait out its collectives


def test_launch_checks_its_arguments_and_its_time(tmp_path):
    with pytest.raises(ValueError, match="world_size"):
        launch(0, [], tmp_path)
    with pytest.raises(TypeError, match="list of str"):
        launch(W, "--steps 3", tmp_path)
    with pytest.raises(TimeoutError, match="timeout_s"):
        launch(W, ["--steps", "3"], tmp_path, timeout_s=0.5, log=lambda line: None)
