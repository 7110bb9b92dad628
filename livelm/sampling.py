"""Turning one row of logits into the next token.

Order of operations follows Hugging Face / vLLM: penalties on raw logits,
then temperature, then top-k, top-p and min-p filtering, then a draw from the
sequence's own seeded generator — so a seeded request gives the same tokens
whether it runs alone or in a batch with others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0        # 0 = greedy
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output (HF semantics)
    presence_penalty: float = 0.0    # OpenAI semantics, on output tokens
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None   # None = the tokenizer's eos and end-of-turn
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None     # None = off; k = also return the k most likely alternatives
    # Logits processors, applied in order before sampling: each is called as
    # proc(prompt_ids, out_ids, logits (V,)) and returns new logits, or an int: that token comes next,
    # drawn from no distribution (e.g. live learning's copying from memory notes, livelm/learn/copying.py).
    # They travel to the engine process with the request, so they must pickle (module-level classes).
    processors: tuple = ()
    # Constrained decoding (livelm/infer/grammar.py): an llguidance grammar the output must match; with a
    # trigger, the row is free until its output ends with that text and the grammar constrains the rest
    grammar: str | None = None
    grammar_trigger: str | None = None

    @classmethod
    def greedy(cls, max_tokens: int, **kw) -> "SamplingParams":
        """The most likely token every step (temperature 0): what evaluations, probes and drafts use, so
        the same model and prompt always give the same answer. `kw` sets any other field."""
        return cls(max_tokens=max_tokens, temperature=0, **kw)

    def copy(self) -> "SamplingParams":
        return replace(self)

    def validate(self) -> None:
        checks = [
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be between 0 and 20"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def apply_penalties(logits: torch.Tensor, p: SamplingParams, prompt_ids: list[int], out_ids: list[int]) -> torch.Tensor:
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(out_ids)), dtype=torch.long, device=logits.device)
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if out_ids and (p.presence_penalty or p.frequency_penalty):
        counts = torch.bincount(torch.tensor(out_ids, device=logits.device), minlength=logits.numel()).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_next(logits: torch.Tensor, p: SamplingParams, prompt_ids: list[int], out_ids: list[int],
                generator: torch.Generator) -> int:
    """logits: (V,) float32 for one sequence. Returns the chosen token id."""
    logits = apply_penalties(logits.clone(), p, prompt_ids, out_ids)
    if p.temperature == 0:
        return int(logits.argmax())
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if p.min_p > 0:
        probs = torch.where(probs >= p.min_p * probs.max(), probs, torch.zeros_like(probs))
    return int(draw(probs[None], [generator])[0])


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of probs (B, V), which need not sum to 1 -> (B,) on the CPU.

    Inverse-CDF draw with one uniform from each row's own CPU generator (so seeds reproduce on every
    device and alone or in a batch): torch.multinomial draws one exponential per vocabulary entry, ~20x
    slower for one sample. Zero-probability tokens cover an empty interval of the CDF: never chosen."""
    cdf = probs.float().cumsum(-1).cpu()                                                 # (B, V)
    u = torch.stack([torch.rand((), generator=g) for g in generators]) * cdf[:, -1]      # (B,)
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).clamp_(max=cdf.size(1) - 1)


def is_plain(p: SamplingParams) -> bool:
    """No penalties, filtering or processors: only a temperature, so the row can be sampled with others at once."""
    return (p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
            and not p.top_k and p.top_p >= 1.0 and p.min_p <= 0 and not p.processors)


def sample_plain(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """sample_next for B rows that are all `is_plain`, with one softmax/cumsum/search for the whole batch.

    logits: (B, V). The draws are the same as sample_next's row by row (one uniform per row from
    that row's generator, inverse CDF), so a seeded request samples the same tokens alone or in a batch.
    """
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = temps == 0
    out = logits.float().argmax(-1).cpu()                                              # (B,)
    if bool(greedy.all()):
        return out.tolist()
    rows = (~greedy).nonzero().squeeze(1)                                              # (b,)
    probs = torch.softmax(logits[rows.to(logits.device)].float() / temps[rows, None].to(logits.device), dim=-1)
    out[rows] = draw(probs, [generators[i] for i in rows.tolist()])
    return out.tolist()


def top_logprobs(logits: torch.Tensor, token: int, k: int, tokenizer) -> dict:
    """Log-probabilities under the model's raw distribution (before sampling filters), as vLLM reports them."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entry = {"token_id": token, "token": tokenizer.decode([token]), "logprob": float(logp[token]), "top": []}
    if k:
        vals, ids = logp.topk(k)
        entry["top"] = [{"token_id": int(i), "token": tokenizer.decode([int(i)]), "logprob": float(v)}
                        for v, i in zip(vals, ids)]
    return entry
