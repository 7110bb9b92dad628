"""Versioned per-tenant adapters on disk: what is live, what came before, what was rejected.

    STORE/<tenant>/v0001/adapter_config.json, adapter_model.safetensors, meta.json
    STORE/<tenant>/state.json   {"current": "v0001" | null, "history": ["v0001", ...]}

`history` lists the versions that went live, in order; rollback steps back
through it (to the base model once it is empty). A rejected update keeps its
directory and meta.json (status "rejected", with the probe figures) for the
operator, but never enters the history. state.json is replaced atomically,
so a crash can never leave a tenant pointing at a half-written version; and
meta.json is the last file an update writes, so a folder without it is an
update that was killed mid-way: never listed, never a rollback target
(bench/chaos.py kills updates to check).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from livelm import io

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VERSION = re.compile(r"^v[0-9]{1,9}$")   # v0001, as add() names them


class AdapterStoreError(ValueError):
    pass


class AdapterStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, tenant: str) -> Path:
        if not _SAFE.match(tenant) or tenant.startswith("."):
            raise AdapterStoreError(f"invalid tenant name {tenant!r}")
        return self.root / tenant

    def state(self, tenant: str) -> dict:
        path = self._dir(tenant) / "state.json"
        if not path.is_file():
            return {"current": None, "history": []}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise AdapterStoreError(f"{path} is corrupt ({e}); fix or delete it to return to the base model") from None

    def current(self, tenant: str) -> Path | None:
        cur = self.state(tenant)["current"]
        return self._dir(tenant) / cur if cur else None

    def versions(self, tenant: str) -> list[dict]:
        d = self._dir(tenant)
        state = self.state(tenant)
        out = []
        for v in sorted(p for p in d.glob("v*") if p.is_dir()) if d.is_dir() else []:
            meta_path = v / "meta.json"
            if meta_path.is_file():   # else an update died writing it (see the module docstring)
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                meta.pop("trained_ids", None)   # which feedback it learned: for the next update, not for listing
                out.append({"version": v.name, "live": v.name == state["current"], **meta})
        return out

    def new_version_dir(self, tenant: str) -> Path:
        d = self._dir(tenant)
        d.mkdir(parents=True, exist_ok=True)
        n = max((int(p.name[1:]) for p in d.glob("v[0-9]*") if p.name[1:].isdigit()), default=0) + 1
        path = d / f"v{n:04d}"
        path.mkdir()
        return path

    def publish(self, tenant: str, version_dir: Path) -> None:
        """Make a saved version live."""
        state = self.state(tenant)
        state["history"] = [v for v in state["history"] if v != version_dir.name] + [version_dir.name]
        state["current"] = version_dir.name
        io.write_json(self._dir(tenant) / "state.json", state)

    def rollback(self, tenant: str, to: str | None = None) -> str | None:
        """Step back to the previous live version (or to `to`); returns the new current version (None = base)."""
        state = self.state(tenant)
        if to is not None:
            # a version is a name in this tenant's folder: "../<other tenant>/v0001" or an absolute path
            # was a directory too, and made another tenant's (or any) folder this tenant's live adapter
            if to not in ("base", "none") and not (_VERSION.match(to) and (self._dir(tenant) / to / "meta.json").is_file()):
                raise AdapterStoreError(f"tenant {tenant} has no version {to}")
            target = None if to in ("base", "none") else to
            if target is None:
                state["history"] = []
            else:
                state["history"] = state["history"][:state["history"].index(target) + 1] \
                    if target in state["history"] else state["history"] + [target]
        else:
            if not state["history"]:
                raise AdapterStoreError(f"tenant {tenant} is already on the base model; nothing to roll back")
            state["history"] = state["history"][:-1]
        state["current"] = state["history"][-1] if state["history"] else None
        io.write_json(self._dir(tenant) / "state.json", state)
        return state["current"]

    def tenants(self) -> list[str]:
        # (dot folders are not tenants: the updates' cache of base-model answers is one, update.py)
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.root.is_dir() else []

    def discard(self, version_dir: Path) -> None:
        shutil.rmtree(version_dir, ignore_errors=True)


def promote(run, tenant: str, store_root, out) -> dict:
    """Merge the tenant's live adapter into the base weights and save a new run (never done automatically).
    Served, a learned adapter answers only the questions near the tenant's feedback (LearnConfig.adapter_scope);
    merged into the weights it answers every question, for every tenant of the new run."""
    from livelm.learn.probes import copy_probes
    from livelm.models import lora
    from livelm.models.gpt import GPT
    from livelm.runs import load_model, read_config, save_checkpoint
    if not out:
        raise ValueError("--promote needs --out NEW_RUN (the base run is never overwritten)")
    current = AdapterStore(store_root).current(tenant)
    if current is None:
        raise ValueError(f"tenant {tenant} has no live adapter to promote")
    model, tok, config = load_model(run)
    lora.load_adapter(model, current, "promote")
    lora.merge(model, "promote")
    merged = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    plain = GPT(model.cfg)
    plain.load_state_dict(merged)
    config = {**read_config(run), "promoted_from": {"run": str(Path(run).resolve()), "tenant": tenant,
                                                    "adapter": str(current)}}
    config.pop("step", None)
    save_checkpoint(out, plain, tok, config, step=0)
    copy_probes(run, out)   # the update guard of the new run asks the same questions
    return {"out": str(out), "merged": str(current)}
