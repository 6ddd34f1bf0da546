"""Layouts of a replica: the families (baseline, kvp, helix, helix+hopb), ``Layout``, ``parse_layout``
(the CLI's text form), ``check_layout`` (does it shard a model) and ``enumerate_layouts`` (every valid
layout on N GPUs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PlannerError, _unknown
from .models import ModelSpec

__all__ = [
    "BASELINE",
    "FAMILIES",
    "HELIX",
    "HELIX_HOPB",
    "KVP",
    "Layout",
    "check_layout",
    "enumerate_layouts",
    "parse_layout",
]


BASELINE = "baseline"  # conventional: TP (duplicating KV beyond the KV heads), attention DP + EP, PP
KVP = "kvp"  # Medha-style KV parallelism without re-provisioning the FFN (reported, not in the headline)
HELIX = "helix"
HELIX_HOPB = "helix+hopb"
FAMILIES = (BASELINE, KVP, HELIX, HELIX_HOPB)
_KINDS = (BASELINE, KVP, HELIX)


@dataclass(frozen=True)
class Layout:
    """One way to run a replica of ``gpus`` GPUs (``kind`` is baseline, kvp or helix).

    baseline: gpus = pp * dp * tp. Attention: heads over tp (the KV cache is duplicated once tp exceeds
              the KV heads; all of it for MLA), requests over dp. FFN: TP = tp, EP = dp (dp > 1: MoE).
    kvp:      gpus = pp * dp * kvp * tp; as baseline, plus the sequence sharded over kvp for attention
              (partials merged by an all-reduce); the FFN is not widened: it runs at TP = tp, EP = dp and
              the kvp groups repeat it.
    helix:    gpus = pp * kvp * tp with tp (= TPA) <= KV heads. o_proj at TP = kvp*tp; FFN at
              TP = ffn_tp, EP = ffn_ep with ffn_tp * ffn_ep = kvp * tp. ``hopb`` overlaps the all-to-all.
    """

    kind: str
    pp: int = 1
    dp: int = 1
    kvp: int = 1
    tp: int = 1
    ffn_tp: int = 1
    ffn_ep: int = 1
    hopb: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise _unknown("layout kind", self.kind, _KINDS)
        for key in ("pp", "dp", "kvp", "tp", "ffn_tp", "ffn_ep"):
            if getattr(self, key) < 1:
                raise PlannerError(f"layout: {key} must be >= 1, got {getattr(self, key)}")
        if self.hopb and self.kind != HELIX:
            raise PlannerError("layout: HOP-B overlaps the Helix all-to-all; only helix layouts have it")
        if self.kind == BASELINE and self.kvp != 1:
            raise PlannerError("layout: a baseline has kvp = 1 (sequence sharding is the 'kvp' kind)")
        if self.kind in (KVP, HELIX) and self.kvp < 2:
            raise PlannerError(f"layout: {self.kind} needs kvp >= 2 (kvp = 1 is a baseline)")
        if self.kind in (BASELINE, KVP):
            if (self.ffn_tp, self.ffn_ep) != (self.tp, self.dp):
                raise PlannerError(f"layout: a {self.kind} layout runs its FFN at TP = tp, EP = dp")
        else:
            if self.dp != 1:
                raise PlannerError("layout: helix has no DP inside a replica (use more replicas)")
            if self.ffn_tp * self.ffn_ep != self.kvp * self.tp:
                raise PlannerError(
                    f"layout: helix re-provisions the kvp*tp = {self.kvp * self.tp} attention GPUs for the "
                    f"FFN, but ffn_tp*ffn_ep = {self.ffn_tp * self.ffn_ep}"
                )

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage."""
        return self.dp * self.kvp * self.tp

    @property
    def gpus(self) -> int:
        return self.pp * self.stage_gpus

    @property
    def family(self) -> str:
        return HELIX_HOPB if self.hopb else self.kind

    @property
    def label(self) -> str:
        parts = [f"pp{self.pp}"] if self.pp > 1 else []
        if self.kind == HELIX:
            parts += [f"kvp{self.kvp}", f"tpa{self.tp}", f"ffn-tp{self.ffn_tp}"]
            parts += [f"ep{self.ffn_ep}"] if self.ffn_ep > 1 else []
        else:
            parts += [f"dp{self.dp}"] if self.dp > 1 else []
            parts += [f"kvp{self.kvp}"] if self.kvp > 1 else []
            parts += [f"tp{self.tp}"]
        return f"{self.family}:" + "-".join(parts)


def parse_layout(text: str) -> Layout:
    """``"helix:kvp=16,tp=4,ffn_tp=8,ffn_ep=8,hopb=1"``, ``"baseline:tp=8,dp=8"`` or ``"kvp:kvp=8,tp=8"``."""
    kind, _, rest = text.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        key = "tp" if key == "tpa" else "ffn_ep" if key == "ep" else key
        if not eq or key not in Layout.__dataclass_fields__ or key == "kind":
            raise PlannerError(
                f"layout {text!r}: cannot read {item!r} (keys: pp, dp, kvp, tp|tpa, ffn_tp, ffn_ep|ep, hopb)"
            )
        try:
            kwargs[key] = value.strip().lower() in ("1", "true", "yes") if key == "hopb" else int(value)
        except ValueError as exc:
            raise PlannerError(f"layout {text!r}: {key} must be an integer") from exc
    kind = kind.strip().lower()
    if kind in (BASELINE, "base", KVP):
        kwargs.setdefault("ffn_tp", kwargs.get("tp", 1))
        kwargs.setdefault("ffn_ep", kwargs.get("dp", 1))
        return Layout(kind=KVP if kind == KVP else BASELINE, **kwargs)
    if kind in (HELIX, HELIX_HOPB):
        if kind == HELIX_HOPB:
            kwargs["hopb"] = True
        n = kwargs.get("kvp", 1) * kwargs.get("tp", 1)
        if "ffn_tp" not in kwargs:
            kwargs["ffn_tp"] = max(1, n // kwargs.get("ffn_ep", 1))
        kwargs.setdefault("ffn_ep", max(1, n // kwargs["ffn_tp"]))
        return Layout(kind=HELIX, **kwargs)
    raise _unknown("layout kind", kind, (BASELINE, KVP, HELIX, HELIX_HOPB))


def check_layout(model: ModelSpec, layout: Layout) -> None:
    """Raise PlannerError if ``layout`` cannot shard ``model``."""
    if model.n_heads % layout.tp:
        raise PlannerError(
            f"layout {layout.label}: {model.n_heads} attention heads are not divisible by tp={layout.tp}"
        )
    if layout.kind == HELIX:
        if layout.tp > model.n_kv_heads:
            raise PlannerError(
                f"layout {layout.label}: helix keeps TPA <= KV heads ({model.n_kv_heads} for {model.name}; "
                f"MLA has one latent head), got tp={layout.tp}"
            )
        if model.n_heads % (layout.kvp * layout.tp):
            raise PlannerError(
                f"layout {layout.label}: the all-to-all splits {model.n_heads} heads over kvp*tpa="
                f"{layout.kvp * layout.tp} GPUs; not divisible"
            )
    if layout.pp > model.n_layers:
        raise PlannerError(f"layout {layout.label}: pp={layout.pp} exceeds {model.n_layers} layers")
    ep = layout.ffn_ep
    if ep > 1:
        if not model.is_moe:
            raise PlannerError(
                f"layout {layout.label}: EP = {ep} (dp > 1 inside a replica) needs a MoE model; "
                f"{model.name} is dense"
            )
        if model.n_experts % ep:
            raise PlannerError(f"layout {layout.label}: {model.n_experts} experts not divisible by EP={ep}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_layouts(model: ModelSpec, gpus: int, families: Sequence[str] = FAMILIES) -> list[Layout]:
    """Every valid layout of a replica whose GPU count divides ``gpus`` (the rest are DP replicas)."""
    if gpus < 1:
        raise PlannerError(f"--gpus must be >= 1, got {gpus}")
    out: list[Layout] = []
    for n in _divisors(gpus):
        for pp in _divisors(n):
            if pp > model.n_layers:
                continue
            stage = n // pp
            for tp in _divisors(stage):
                for dp in _divisors(stage // tp):
                    kvp = stage // (tp * dp)
                    kind = BASELINE if kvp == 1 else KVP
                    if kind in families:
                        cand = Layout(kind, pp=pp, dp=dp, kvp=kvp, tp=tp, ffn_tp=tp, ffn_ep=dp)
                        if _valid(model, cand):
                            out.append(cand)
                kvp = stage // tp
                if kvp < 2:
                    continue
                for ep in _divisors(stage):
                    for hopb in (False, True):
                        if (HELIX_HOPB if hopb else HELIX) not in families:
                            continue
                        cand = Layout(HELIX, pp=pp, kvp=kvp, tp=tp, ffn_tp=stage // ep, ffn_ep=ep, hopb=hopb)
                        if _valid(model, cand):
                            out.append(cand)
    return out


def _valid(model: ModelSpec, layout: Layout) -> bool:
    try:
        check_layout(model, layout)
    except PlannerError:
        return False
    return True
