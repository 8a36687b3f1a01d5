"""Training on several processes: the collectives behind cross-device negatives, a DDP worker, and ``launch``.

With W processes (ranks) each encoding B pairs, every query can score the W·B positives of all ranks instead of
its own B: the candidates are gathered across ranks (DPR, Karpukhin et al., 2020, §3.2, arXiv:2004.04906, trained
on 8 GPUs this way). ``course_lib.losses.cross_device_in_batch_loss`` is the loss; this module holds the pieces
that talk to the other ranks (``exchange``, ``gather_rows``), the cross-GPU batch balance loss across real ranks,
and a worker that trains the course encoder with ``DistributedDataParallel``. Run the worker with torchrun::

    python -m torch.distributed.run --nproc_per_node=2 -m course_lib.distributed --out runs/ddp --steps 30 \\
        --batch-size 32 --gather differentiable [--preset fast] [--seed 0] [--lr 2e-3] [--eval] [--grad-check]

or from a notebook with ``launch(2, ["--steps", "30", ...], "runs/ddp")``. Each step one global batch of W·B
examples with distinct positives is drawn (``NoDuplicateBatchSampler``: the batches of one process with batch
W·B and the same seed) and rank r trains on its slice r. Rank 0 writes ``metrics.json`` and ``model.pt``;
``--grad-check`` first writes ``grad_check.pt`` (see ``_grad_check``). gloo runs on the CPU, nccl on one GPU per
process.
"""

import argparse
import collections
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn
from torch.distributed.elastic.multiprocessing.errors import record

from course_lib.losses import GATHERS, cross_device_in_batch_loss, cross_gpu_balance_loss
from course_lib.utils import atomic_path

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------
# collectives


def rank_and_world(group=None) -> tuple[int, int]:
    """(this process's rank, the number of ranks) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group first (torchrun sets up its environment)")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def exchange(info: dict | None, error: Exception | None, group=None, what: str = "the loss") -> list[dict]:
    """Every rank's ``info`` (a picklable dict), in rank order, after one ``all_gather_object``. A rank whose own
    checks failed passes ``error`` instead of raising at once (the others would wait for it in the next
    collective); after the exchange it re-raises and every other rank raises a ``ValueError`` naming it.
    ``info["same"]`` holds values every rank must share (width, dtype, ...): if they differ, every rank raises."""
    _, world = rank_and_world(group)
    payload = {"info": info, "error": None if error is None else f"{type(error).__name__}: {error}"}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, payload, group=group)
    if error is not None:
        raise error
    failed = [(r, p["error"]) for r, p in enumerate(gathered) if p["error"]]
    if failed:
        r, message = failed[0]
        raise ValueError(f"{what}: the inputs of rank {r} failed its checks ({message}); every rank stops here "
                         f"instead of waiting for rank {r} in the gather. Fix rank {r}'s inputs")
    infos = [p["info"] for p in gathered]
    for key in infos[0].get("same", {}):
        values = [i["same"][key] for i in infos]
        if any(v != values[0] for v in values):
            raise ValueError(f"{what}: the ranks disagree on the {key}: {values} (ranks 0 to {world - 1}); every "
                             "rank must run the same encoder and loss settings on the same kind of batch")
    return infos


def gather_rows(local: torch.Tensor, sizes: list[int], *, differentiable: bool, group=None) -> list[torch.Tensor]:
    """Every rank's rows of ``local`` (rank s sends ``sizes[s]`` rows, along dim 0), in rank order.

    Collectives need one shape on every rank, so rows are zero-padded to ``max(sizes)`` and cut back after.
    ``differentiable=True`` uses ``torch.distributed.nn.all_gather``: its backward sums every rank's gradient
    for a row and hands it to the row's owner. ``differentiable=False`` gathers detached copies with
    ``torch.distributed.all_gather`` and puts this rank's live ``local`` back into its slot, so gradients reach
    only the local rows (DPR's and SimCSE's pattern)."""
    rank, world = rank_and_world(group)
    pad = max(sizes) - local.shape[0]
    padded = torch.cat([local, local.new_zeros(pad, *local.shape[1:])]) if pad else local
    if differentiable:
        with warnings.catch_warnings():  # torch 2.13 marks it deprecated; sentence-transformers still uses it
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather", FutureWarning)
            parts = list(torch.distributed.nn.all_gather(padded.contiguous(), group=group or dist.group.WORLD))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach().contiguous(), group=group)
        parts[rank] = padded  # the live local rows
    return [p[:n] for p, n in zip(parts, sizes)]


def cross_gpu_balance_loss_across_ranks(q: torch.Tensor, pos: torch.Tensor, negatives: torch.Tensor, *,
                                        temperature: float = 0.05, similarity: str = "cos", in_batch: bool = False,
                                        group=None) -> torch.Tensor:
    """Conan's cross-GPU batch balance loss (Li et al., 2024, arXiv:2408.15710, §2.3) across real ranks: every
    rank holds the *same* ``q`` and ``pos`` (n, D) and its own ``negatives`` (M_r, D) or (n, K_r, D); these are
    gathered with ``torch.distributed.nn.all_gather`` and every rank computes the same
    ``course_lib.losses.cross_gpu_balance_loss`` over all of them. q and pos get the same gradient on every
    rank and each rank's negatives W times theirs (the gather's backward sums W equal losses), so DDP's average
    is exactly the loss's gradient. Shapes, dtype and settings must agree, and q and pos (by a checksum)."""
    _, world = rank_and_world(group)
    settings = {"temperature": temperature, "similarity": similarity, "in_batch": in_batch}
    if world == 1:
        return cross_gpu_balance_loss(q, pos, [negatives], **settings)
    try:
        if not all(isinstance(t, torch.Tensor) for t in (q, pos, negatives)) or negatives.dim() not in (2, 3):
            raise TypeError("q, pos must be (n, D) tensors and negatives an (M_r, D) or (n, K_r, D) tensor")
        sums = [float((t.detach().double().flatten() * torch.linspace(1, 2, t.numel(), dtype=torch.float64,
                                                                       device=t.device)).sum()) for t in (q, pos)]
        info, error = {"rows": negatives.shape[-2], "sums": sums, "scale": float(q.detach().abs().sum() + pos.detach().abs().sum()),
                       "same": {"q and pos shapes": (tuple(q.shape), tuple(pos.shape)), "dtype": str(q.dtype),
                                "negatives' shape but rows": tuple(negatives.shape[:-2]) + negatives.shape[-1:],
                                "settings": settings}}, None
    except (TypeError, ValueError) as e:
        info, error = None, e
    infos = exchange(info, error, group, "cross_gpu_balance_loss_across_ranks")
    if any(abs(a - b) > 1e-4 * max(1.0, infos[0]["scale"]) for i in infos for a, b in zip(i["sums"], infos[0]["sums"])):
        raise ValueError("q and pos differ across ranks (their checksums do not match): in the CBB loss every rank "
                         "holds the same queries and positives and only the negatives differ")
    rows = [i["rows"] for i in infos]
    if negatives.dim() == 2:
        parts = gather_rows(negatives, rows, differentiable=True, group=group)  # [(M_s, D)]
    else:  # per-query negatives (n, K_r, D): gather along K
        parts = [p.transpose(0, 1) for p in gather_rows(negatives.transpose(0, 1), rows, differentiable=True,
                                                         group=group)]  # [(n, K_s, D)]
    return cross_gpu_balance_loss(q, pos, parts, **settings)


# ---------------------------------------------------------------------------------------------------------
# the worker (run under torchrun)


def shard_sizes(n: int, world: int) -> list[int]:
    """How many of a global batch's ``n`` rows each of ``world`` ranks takes, in order: the first ``n % world``
    ranks one more (rank r's slice starts at the sum of the sizes before it)."""
    base, extra = divmod(n, world)
    return [base + (r < extra) for r in range(world)]


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torch.distributed.run --nproc_per_node=W -m course_lib.distributed",
                                description="Train the course encoder with DDP and cross-device in-batch negatives.")
    p.add_argument("--out", required=True, help="folder for metrics.json, model.pt, grad_check.pt, errors/")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's train_steps)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per rank (default: preset batch // W)")
    p.add_argument("--gather", choices=GATHERS, default="differentiable")
    p.add_argument("--preset", choices=("fast", "full"), default="fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--eval", action="store_true", help="rank 0 scores the test split after training")
    p.add_argument("--grad-check", action="store_true", help="write grad_check.pt before training")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="auto: nccl when there is a GPU per process, else gloo on the CPU")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a collective waits for the other ranks")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--crash-rank", type=int, default=None, help="demo/test: this rank raises at step 1")
    return p.parse_args(argv)


def _check_args(args, world: int) -> None:
    least_steps, least_batch = (0, 2) if args.grad_check else (1, 1)  # the grad check's uneven split drops a row
    mode = " with --grad-check" if args.grad_check else ""
    rules = [("steps", args.steps, f">= {least_steps}{mode}", args.steps is None or args.steps >= least_steps),
             ("batch-size", args.batch_size, f">= {least_batch}{mode}", args.batch_size is None or args.batch_size >= least_batch),
             ("timeout", args.timeout, "> 0 seconds", args.timeout > 0),
             ("log-every", args.log_every, ">= 1", args.log_every >= 1),
             ("crash-rank", args.crash_rank, f"a rank in 0..{world - 1}", args.crash_rank in (None, *range(world))),
             ("lr", args.lr, "> 0", args.lr is None or args.lr > 0)]
    problems = [f"--{name} must be {rule}, got {value}" for name, value, rule, ok in rules if not ok]
    if problems:
        raise ValueError("bad arguments: " + "; ".join(problems))


def _backend(choice: str, local_rank: int, local_world: int) -> tuple[str, torch.device]:
    gpus = torch.cuda.device_count()
    if choice == "nccl" and gpus < local_world:
        raise ValueError(f"--backend nccl needs one GPU per process: {local_world} processes, {gpus} GPUs; use "
                         "--backend gloo (CPU) or fewer processes")
    if choice == "nccl" or (choice == "auto" and gpus >= local_world):
        torch.cuda.set_device(local_rank)
        return "nccl", torch.device("cuda", local_rank)
    return "gloo", torch.device("cpu")


@record
def main(argv=None) -> None:
    """The worker's entry point (``python -m course_lib.distributed`` under torchrun). A failing rank writes its
    traceback to ``OUT/errors/rank<r>.txt``, which ``launch`` reports."""
    args = _parse(argv)
    if "RANK" not in os.environ:
        raise RuntimeError("course_lib.distributed is a torchrun worker: run python -m torch.distributed.run "
                           "--nproc_per_node=2 -m course_lib.distributed ..., or course_lib.distributed.launch()")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out = Path(args.out)
    try:
        _check_args(args, world)
        local = int(os.environ.get("LOCAL_RANK", 0))
        backend, device = _backend(args.backend, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
        try:
            _run(args, out, rank, world, backend, device)
        except BaseException as e:
            traceback.clear_frames(e.__traceback__)  # free the DDP model before the group (see _run)
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except BaseException:
        with atomic_path(out / "errors" / f"rank{rank}.txt") as tmp:
            tmp.write_text(traceback.format_exc())
        raise


def _run(args, out: Path, rank: int, world: int, backend: str, device: torch.device) -> None:
    # the training stack is imported here, so the loss's collectives above load without transformers
    from torch.nn.parallel import DistributedDataParallel as DDP

    from course_lib.config import get_config
    from course_lib.data import load_dataset
    from course_lib.models import make_encoder
    from course_lib.samplers import NoDuplicateBatchSampler
    from course_lib.tokenizer import load_tokenizer
    from course_lib.utils import seed_everything

    def log(message: str) -> None:
        print(f"[rank {rank}] {message}", flush=True)

    cfg = get_config(args.preset, seed=args.seed, **({"lr": args.lr} if args.lr else {}))
    seed_everything(cfg.seed)
    data = load_dataset("wordnet", cfg.preset)
    tokenizer = load_tokenizer(data, cfg.vocab_size)
    batch = args.batch_size or max(1, cfg.batch_size // world)
    model = make_encoder(cfg, tokenizer).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
    sampler = NoDuplicateBatchSampler(data.train, world * batch, torch.Generator().manual_seed(cfg.seed))
    record = {"world_size": world, "per_rank_batch": batch, "global_batch": world * batch, "gather": args.gather,
              "backend": backend, "device": str(device), "threads_per_rank": torch.get_num_threads(),
              "preset": cfg.preset, "seed": cfg.seed, "lr": cfg.lr, "temperature": cfg.temperature}
    log(f"{backend} on {device}, {torch.get_num_threads()} thread(s), {world} x {batch} pairs, gather={args.gather}")
    if args.grad_check:
        record["grad_check"] = _grad_check(ddp, data, tokenizer, cfg, next(iter(sampler)), rank, world, device, out)
        log("wrote grad_check.pt" if rank == 0 else "grad check done")
    steps = cfg.train_steps if args.steps is None else args.steps
    if steps:
        record |= _train(ddp, data, tokenizer, cfg, sampler, args, steps, rank, world, device, log)
    # DDP's reducer holds the process group; a gloo group freed after destroy_process_group() can hang in its
    # destructor (seen with torch 2.13), so the DDP wrapper goes first. No collective after this: rank 0 evaluates.
    del ddp
    dist.destroy_process_group()
    if rank == 0:
        if steps and args.eval:
            from course_lib.metrics import evaluate

            record["test"] = evaluate(model, data, "test", tokenizer=tokenizer, max_query_len=cfg.max_query_len,
                                      max_doc_len=cfg.max_doc_len)
            log(f"test ndcg@10 {record['test']['ndcg@10']:.4f}, recall@10 {record['test']['recall@10']:.4f}")
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")


def _encode_pairs(ddp, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(ddp(**{k: v.to(device) for k, v in batch[key].items()}) for key in ("q", "d"))  # (B, D) each


def _train(ddp, data, tokenizer, cfg, sampler, args, steps, rank, world, device, log) -> dict:
    from course_lib.in_batch import pair_batches
    from course_lib.train import save_checkpoint, train

    batch = sampler.batch_size // world
    shards = (idx[rank * batch : (rank + 1) * batch] for idx in sampler)  # this rank's slice of each global batch
    done = 0

    def step(model, pairs):
        nonlocal done
        done += 1
        if args.crash_rank == rank:
            raise RuntimeError(f"--crash-rank {rank}: rank {rank} fails on purpose at step {done}")
        q, d = _encode_pairs(model, pairs, device)
        loss = cross_device_in_batch_loss(q, d, temperature=cfg.temperature, gather=args.gather)
        if rank == 0 and (done == 1 or done % args.log_every == 0):
            log(f"step {done}/{steps} loss {loss.item():.4f}")
        return loss

    optimizer = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr)
    # steps only: a wall-clock budget could stop one rank before the others, which would then wait forever
    history = train(ddp, step, pair_batches(data, tokenizer, shards, cfg), optimizer=optimizer, max_steps=steps,
                    progress=False)
    per_rank: list = [None] * world
    dist.all_gather_object(per_rank, (history.losses, history.train_seconds))
    if rank == 0:
        save_checkpoint(Path(args.out) / "model.pt", ddp.module, optimizer, history.steps, history)
    seconds = max(s for _, s in per_rank)
    # differentiable: each rank's loss is W × its share, detached: each is the global loss; either way the mean
    losses = [sum(rank_losses[i] for rank_losses, _ in per_rank) / world for i in range(history.steps)]
    return {"steps": history.steps, "losses": losses, "train_seconds": round(seconds, 3),
            "steps_per_s": history.steps / seconds, "examples_per_s": history.steps * sampler.batch_size / seconds}


def _grad_check(ddp, data, tokenizer, cfg, global_idx: list[int], rank, world, device, out: Path) -> str:
    """Loss and DDP-averaged gradients of the first global batch for each gather mode, split evenly (all rows)
    and unevenly (the last row dropped; ``shard_sizes``). Rank 0 saves ``grad_check.pt``: ``{"state": the
    initial weights, "indices": {"even"|"uneven": global row indices}, "results": {"<gather>/<split>":
    {"losses": one per rank, "sizes", "grads": {name: tensor}}}, "temperature", ...}``, for one process to redo."""
    from course_lib.in_batch import pair_batches

    state = {k: v.detach().cpu().clone() for k, v in ddp.module.state_dict().items()}
    cases, results = {"even": global_idx, "uneven": global_idx[:-1]}, {}
    was_training = ddp.training
    ddp.eval()  # no dropout: the same function on every rank and in a single-process recomputation
    for split, idx in cases.items():
        sizes = shard_sizes(len(idx), world)
        start = sum(sizes[:rank])
        pairs = next(pair_batches(data, tokenizer, [idx[start : start + sizes[rank]]], cfg))
        for gather in GATHERS:
            ddp.zero_grad(set_to_none=True)
            q, d = _encode_pairs(ddp, pairs, device)
            loss = cross_device_in_batch_loss(q, d, temperature=cfg.temperature, gather=gather)
            loss.backward()  # DDP averages the gradients over the ranks here
            losses: list = [None] * world
            dist.all_gather_object(losses, loss.item())
            results[f"{gather}/{split}"] = {"losses": losses, "sizes": sizes, "grads": {
                n: p.grad.detach().cpu().clone() for n, p in ddp.module.named_parameters() if p.grad is not None}}
    ddp.zero_grad(set_to_none=True)
    ddp.train(was_training)
    if rank == 0:
        with atomic_path(out / "grad_check.pt") as tmp:
            torch.save({"state": state, "indices": cases, "results": results, "world_size": world,
                        "temperature": cfg.temperature, "preset": cfg.preset}, tmp)
    return "grad_check.pt"


# ---------------------------------------------------------------------------------------------------------
# launching from Python


class WorkerError(RuntimeError):
    """A ``launch`` run failed; the message carries the failing rank's traceback."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, args, out_dir, *, timeout_s: float = 600.0, log=print, threads: int | None = None) -> dict:
    """Run the worker on ``world_size`` processes with torchrun in a subprocess; return its ``metrics.json``.

    The command is ``sys.executable -m torch.distributed.run --nproc_per_node=W --master_port=<free port> -m
    course_lib.distributed --out OUT_DIR *args``, with ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS =
    threads`` (default: the CPU cores shared out, ``cpu_count // W``, at least 1). Every log line goes to
    ``log`` (``print``, or any callable taking a str) as it arrives. A failed run raises ``WorkerError`` with the
    traceback of the rank that failed first (torchrun then stops the others); a run longer than ``timeout_s``
    is killed and raises ``TimeoutError`` (an interrupt stops it too). Stale ``metrics.json`` and ``errors/``
    files in ``out_dir`` are removed first."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1 (the number of processes), got {world_size!r}")
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise TypeError(f"args must be a list of str, e.g. ['--steps', '30'], got {args!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / "metrics.json", *(out / "errors").glob("rank*.txt")]:
        stale.unlink(missing_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "course_lib.distributed",
           "--out", str(out), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own process group, so a timeout can stop every worker
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
    tail, deadline = collections.deque(maxlen=40), time.monotonic() + timeout_s
    try:
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            tail.append(line.rstrip())
            log(line.rstrip())
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (queue.Empty, subprocess.TimeoutExpired):
        _stop(proc)
        raise TimeoutError(f"the {world_size}-process run took more than timeout_s={timeout_s} s and was stopped; "
                           "give it more time or fewer steps. Its last lines:\n" + "\n".join(tail)) from None
    except BaseException:  # an interrupted notebook cell, or a failing log callback: leave no workers behind
        _stop(proc)
        raise
    if rc != 0:
        errors = sorted((out / "errors").glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
        if errors:
            later = f" (then also {', '.join(p.stem for p in errors[1:])})" if errors[1:] else ""
            raise WorkerError(f"{errors[0].stem.replace('rank', 'rank ')} failed first{later}, torchrun exit code "
                              f"{rc}; its traceback:\n{errors[0].read_text()}")
        raise WorkerError(f"torchrun exited with code {rc} and no rank left a traceback; its last lines:\n"
                          + "\n".join(tail))
    return json.loads((out / "metrics.json").read_text())


def _stop(proc: subprocess.Popen) -> None:
    """Stop the process group ``launch`` started (torchrun and its workers): SIGTERM, then SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
            return


if __name__ == "__main__":
    main()
