"""Training state for --resume: train_state.pt, and the sharded checkpoints of --fsdp runs.

The run itself (config.json, model.safetensors, tokenizer.json) is written and read by the run
layer, livelm/runs.py; this file adds what only resuming needs:
    train_state.pt      optimizer moments, step, RNG states, loaded with torch.load(weights_only=True)
    checkpoint_sharded/ --fsdp runs only, instead of train_state.pt: model and optimizer
                        state in torch.distributed.checkpoint's format, one file per
                        process, reloadable on any process count (see save_sharded)
The step is stored in all the checkpoint files; a mismatch (a kill between the renames) is
reported instead of silently resuming from a mixed state.
"""
from __future__ import annotations

import functools
import json
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save

from livelm import io
from livelm.runs import SHARDED, CheckpointError, load_weights, read_config, state_dict_for_save
from livelm.tokenizer import Tokenizer


def load_train_state(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "train_state.pt"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} not found (was the run saved with an older livelm, or not at all?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a variety of errors for truncated zip files
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    _, meta = load_weights(run_dir / "model.safetensors")
    cfg_step = read_config(run_dir).get("step")
    if not (str(state.get("step")) == meta.get("step") == str(cfg_step)):
        raise CheckpointError(f"{run_dir}: checkpoint files are from different steps (state {state.get('step')}, "
                              f"weights {meta.get('step')}, config {cfg_step}) — the last save was interrupted; "
                              f"start a fresh run or restore a backup")
    return state


# ---- sharded checkpoints (--fsdp) -------------------------------------------------------


def save_sharded(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 tokenizer: Tokenizer | None, config: dict, step: int, train_state: dict) -> None:
    """The --fsdp checkpoint. Collective: every process calls it.

    RUN/checkpoint_sharded/ holds the model and the optimizer moments as written
    by torch.distributed.checkpoint (DCP): each process writes only its own shards,
    in parallel, and the loader re-slices them for whatever process count it runs
    on — 8 GPUs, 2, or one. Beside them, train_state.json holds step, best_val and
    the RNG state as plain JSON. model.safetensors and config.json are written as
    for every run (the full weights gathered to rank 0), so generate, chat, serve,
    export and eval read an FSDP run like any other.

    Only tensors go into DCP: it stores any other object as a pickle and unpickles
    it with weights_only=False when loading. The optimizer's param_groups (lr,
    betas, ...) are therefore not saved; they come from the run's config, which is
    where they came from in the first place.

    A directory cannot be replaced atomically, so the shards are written to
    .checkpoint_sharded.tmp and swapped in with two renames once everything is
    on disk; a kill between those two leaves the previous checkpoint whole as
    .checkpoint_sharded.old, which the loader falls back to. As in
    save_checkpoint, the renames of all files come in quick succession and a
    kill between them is reported on --resume as a step mismatch. With several
    nodes, RUN must be on a file system all of them share.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    run_dir = Path(run_dir)
    distributed = dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    tmp, final, old = run_dir / f".{SHARDED}.tmp", run_dir / SHARDED, run_dir / f".{SHARDED}.old"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed save left behind
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP warns that it "assumes" that is what we meant (we do)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd["state"]}, storage_writer=dcp.FileSystemWriter(tmp),
                 no_dist=not distributed)
    weights = _full_weights(model)  # collective too
    if main:
        plain = {"step": step, "best_val": train_state["best_val"],
                 **{k: bytes(v.tolist()).hex() for k, v in train_state.items() if k.startswith("rng_")}}
        io.write_json(tmp / "train_state.json", plain)
        io.write_bytes(run_dir / "model.safetensors.next", save(weights, metadata={"step": str(step), "format": "pt"}))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        (run_dir / "model.safetensors.next").replace(run_dir / "model.safetensors")
        io.write_json(run_dir / "config.json", {**config, "step": step})
        shutil.rmtree(old, ignore_errors=True)
        (run_dir / "train_state.pt").unlink(missing_ok=True)  # a DDP-era state, older than this checkpoint
        if tokenizer is not None and not (run_dir / "tokenizer.json").exists():
            tokenizer.save(run_dir / "tokenizer.json")
    if distributed:
        dist.barrier()  # nobody reads or rewrites the run before rank 0 has finished


def _full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (None elsewhere), tied weights stored once."""
    from livelm.runtime import is_sharded
    if not is_sharded(model):
        return state_dict_for_save(model)
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    # gathers one tensor at a time and moves it to the CPU, so rank 0 never holds the full model on its GPU
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    # a tied parameter appears under every name; keep the first, as state_dict_for_save does
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v.contiguous() for k, v in full.items() if k not in aliases}


def _sharded_folder(run_dir: Path) -> Path:
    final, old = run_dir / SHARDED, run_dir / f".{SHARDED}.old"
    return old if old.is_dir() and not final.is_dir() else final  # .old: killed between a save's two renames


def sharded_step(run_dir: str | Path) -> int | None:
    """Step of the run's sharded checkpoint, None if it has none."""
    path = _sharded_folder(Path(run_dir)) / "train_state.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_resume_state(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer (and, from a sharded checkpoint, the model) for --resume.

    Works across layouts and process counts: a sharded checkpoint loads into an
    FSDP model on any number of processes or into a plain model; a train_state.pt
    (DDP or single-process run) loads into a plain or an FSDP model. The one whose
    step matches config.json is the current one. Collective under FSDP.
    Returns the plain training state: step, best_val, rng_cpu (and rng_cuda, ...).
    """
    run_dir = Path(run_dir)
    step = read_config(run_dir).get("step")
    if sharded_step(run_dir) == step or (_sharded_folder(run_dir).is_dir() and not (run_dir / "train_state.pt").exists()):
        return load_sharded(run_dir, model, optimizer)
    state = load_train_state(run_dir)
    _load_full_optimizer(model, optimizer, state["optimizer"])
    return state


def load_sharded(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load RUN/checkpoint_sharded into `model` and `optimizer` (sharded or not). Collective under FSDP.

    Trust boundary: DCP's own loader unpickles the .metadata file with plain
    pickle.load and any non-tensor entry with torch.load(weights_only=False) —
    either would run code from a malicious checkpoint. Here the metadata goes
    through an unpickler that only builds DCP's own metadata classes, torch.Size
    and dtypes, non-tensor entries are refused, and shard files must lie inside
    the checkpoint folder. The tensors themselves DCP reads with
    torch.load(weights_only=True), PyTorch's restricted loader. Loading someone
    else's sharded checkpoint can thus fail but not execute their code; as with
    any file format, still prefer model.safetensors for weights from strangers.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    run_dir = Path(run_dir)
    folder = _sharded_folder(run_dir)
    path = folder / "train_state.json"
    try:
        plain = json.loads(path.read_text(encoding="utf-8"))
        state = {"step": int(plain["step"]), "best_val": float(plain["best_val"]),
                 **{k: torch.tensor(list(bytes.fromhex(v)), dtype=torch.uint8)
                    for k, v in plain.items() if k.startswith("rng_")}}
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {path} not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e})") from None
    _check_steps(run_dir, state["step"])
    # checked here, before DCP sees the folder, so that a bad checkpoint gives one clear error
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    pickled = [k for k, v in _read_metadata(folder).state_dict_metadata.items()
               if not isinstance(v, TensorStorageMetadata)]
    if pickled:
        raise CheckpointError(f"{folder} holds pickled objects ({', '.join(pickled[:3])}); livelm's sharded "
                              f"checkpoints hold tensors only, refusing to unpickle them")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # also creates the optimizer moments to load into
    target = {"model": model_sd, "optim": optim_sd["state"]}
    try:
        reader, planner = _safe_dcp()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(target, storage_reader=reader(folder), planner=planner(), no_dist=not dist.is_initialized())
    except CheckpointError:
        raise
    except Exception as e:  # DCP wraps per-rank failures in its own exception types
        raise CheckpointError(f"{folder} does not load into this model ({type(e).__name__}: {str(e)[:500]})") from None
    set_state_dict(model, optimizer, model_state_dict=target["model"],
                   optim_state_dict={"state": target["optim"], "param_groups": optim_sd["param_groups"]})
    return state


def _check_steps(run_dir: Path, state_step) -> None:
    from safetensors import safe_open
    try:
        with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:  # the header only
            weights_step = (f.metadata() or {}).get("step")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{run_dir / 'model.safetensors'} is corrupt or truncated ({e})") from None
    cfg_step = read_config(run_dir).get("step")
    if not (str(state_step) == weights_step == str(cfg_step)):
        raise CheckpointError(f"{run_dir}: checkpoint files are from different steps (state {state_step}, "
                              f"weights {weights_step}, config {cfg_step}) — the last save was interrupted; "
                              f"start a fresh run or restore a backup")


def _load_full_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, osd: dict) -> None:
    """A train_state.pt optimizer state into a plain model, or into an FSDP model (switching DDP -> FSDP)."""
    from livelm.runtime import is_sharded
    if not is_sharded(model):
        optimizer.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    # torch numbers parameters by position in the param groups; name them, and DCP's helper
    # cuts each full tensor down to this process's shard
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    full = {"state": {order[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in osd["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _dcp_globals() -> set[tuple[str, str]]:
    meta = "torch.distributed.checkpoint.metadata"
    return ({(meta, n) for n in ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
                                 "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")}
            | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
               ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
               ("pathlib", "Path"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath")})


def _read_metadata(folder: Path, name: str = ".metadata"):
    """DCP's metadata file, unpickled safely, its shard files checked to lie inside `folder`."""
    path = folder / name
    try:
        with open(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: the sharded checkpoint is incomplete") from None
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or not a livelm checkpoint ({type(e).__name__}: {e})") from None
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = str(getattr(info, "relative_path", ""))
        if not rel or Path(rel).name != rel or rel.startswith("."):
            raise CheckpointError(f"{path} points outside its folder ({rel!r}); refusing to load it")
    if not isinstance(getattr(metadata, "state_dict_metadata", None), dict):
        raise CheckpointError(f"{path} is not a checkpoint's metadata")
    return metadata


class _MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler that can build DCP's metadata and nothing else (no functions to call, no imports)."""
    allowed = _dcp_globals()

    def find_class(self, module, name):
        if (module, name) in self.allowed or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


@functools.cache
def _safe_dcp():
    """(reader class, planner class) for loading DCP without unpickling; built lazily, as importing
    torch.distributed.checkpoint costs a second that generate/chat/serve have no need to pay."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class TrustedReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")  # DCP's fallback: per-rank metadata files
            metadata = _read_metadata(Path(self.path), ".metadata" if rank is None else f"__{rank}.metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class TensorsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # DCP would torch.load(value, weights_only=False) it
            raise CheckpointError(f"sharded checkpoint entry {read_item.dest_index.fqn!r} is a pickled object; "
                                  f"livelm's sharded checkpoints hold tensors only, refusing to unpickle it")

    return TrustedReader, TensorsOnlyPlanner
