"""Per-GPU hardware figures: ``Hardware``, the datasheet presets, ``get_hardware`` and
``custom_hardware`` (figures given by hand, e.g. a measured CPU)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PlannerError, _unknown
from .precision import PRECISIONS

__all__ = ["HARDWARE_PRESETS", "Hardware", "custom_hardware", "get_hardware"]


@dataclass(frozen=True)
class Hardware:
    """Per-GPU figures. Bandwidths in bytes/s, FLOP/s dense (no sparsity), latencies in seconds.

    ``link_bandwidth`` is one direction of one GPU's scale-up link (what a GPU can send while it
    receives as much); ``link_latency`` is charged once per phase of a collective (an all-to-all or a
    one-shot reduce has one phase, an all-reduce two). Groups that do not fit in one scale-up domain of
    ``domain_size`` GPUs use the scale-out figures instead. ``kernel_overhead`` is the fixed time every
    kernel on the critical path costs beyond its roofline time (launch gap inside a CUDA graph, DRAM
    latency, ramp-up and tail of a small kernel); docs/planner.md gives its source and its effect.
    """

    name: str
    hbm_bandwidth: float
    hbm_capacity: float
    flops: dict[str, float]
    link_bandwidth: float
    link_latency: float
    domain_size: int
    scaleout_bandwidth: float
    scaleout_latency: float
    kernel_overhead: float = 0.0
    usable_memory: float = 0.9  # share of HBM for weights + KV; the rest: activations, workspaces, runtime
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("hbm_bandwidth", "hbm_capacity", "link_bandwidth", "scaleout_bandwidth"):
            if not getattr(self, key) > 0:
                raise PlannerError(f"hardware {self.name}: {key} must be positive, got {getattr(self, key)}")
        for key in ("link_latency", "scaleout_latency", "kernel_overhead"):
            if getattr(self, key) < 0:
                raise PlannerError(f"hardware {self.name}: {key} must be >= 0")
        if self.domain_size < 1:
            raise PlannerError(f"hardware {self.name}: domain_size must be >= 1")
        if not 0 < self.usable_memory <= 1:
            raise PlannerError(f"hardware {self.name}: usable_memory must be in (0, 1]")
        missing = [p for p in PRECISIONS if not self.flops.get(p, 0) > 0]
        if missing:
            raise PlannerError(f"hardware {self.name}: no positive FLOP/s for {', '.join(missing)}")

    def flops_at(self, precision: str) -> float:
        return self.flops[precision]

    def link(self, group: int) -> tuple[float, float]:
        """(bandwidth, latency) for a collective over ``group`` GPUs."""
        if group <= self.domain_size:
            return self.link_bandwidth, self.link_latency
        return self.scaleout_bandwidth, self.scaleout_latency


_T = 1e12
_G = 1e9
_US = 1e-6
_KERNEL_OVERHEAD = 3.0 * _US

HARDWARE_PRESETS: dict[str, Hardware] = {
    # NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 80 GB, 989 TFLOP/s BF16 and 1979 FP8 dense (the sheet's
    # 1979/3958 are "with sparsity"); NVLink 4: 900 GB/s bidirectional = 450 GB/s per direction, 8-GPU
    # HGX domain. Hopper has no FP4 tensor cores: fp4 weights are dequantized and multiplied at the FP8
    # rate. Scale-out: one ConnectX-7 400 Gb/s NIC per GPU = 50 GB/s.
    "h100": Hardware(
        name="h100",
        hbm_bandwidth=3.35 * _T,
        hbm_capacity=80 * _G,
        flops={"bf16": 989 * _T, "fp8": 1979 * _T, "fp4": 1979 * _T},
        link_bandwidth=450 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA H100 datasheet (SXM5); NVLink 4; ConnectX-7",
    ),
    # NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e, 141 GB; compute and NVLink as H100.
    "h200": Hardware(
        name="h200",
        hbm_bandwidth=4.8 * _T,
        hbm_capacity=141 * _G,
        flops={"bf16": 989 * _T, "fp8": 1979 * _T, "fp4": 1979 * _T},
        link_bandwidth=450 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA H200 datasheet (SXM); NVLink 4; ConnectX-7",
    ),
    # NVIDIA HGX B200 datasheet (per GPU): 8 TB/s HBM3e, 180 GB; dense 2.25 PFLOP/s BF16, 4.5 FP8, 9 FP4
    # (half the sparse figures); NVLink 5: 1.8 TB/s bidirectional = 900 GB/s per direction; 8-GPU domain.
    "b200": Hardware(
        name="b200",
        hbm_bandwidth=8.0 * _T,
        hbm_capacity=180 * _G,
        flops={"bf16": 2250 * _T, "fp8": 4500 * _T, "fp4": 9000 * _T},
        link_bandwidth=900 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA HGX B200 datasheet; NVLink 5; ConnectX-7",
    ),
    # NVIDIA GB200 NVL72 datasheet, rack totals / 72 GPUs: 576 TB/s HBM3e -> 8 TB/s; 13.4 TB -> 186 GB;
    # 1440 / 720 / 360 PFLOP/s FP4 / FP8 / BF16 "with sparsity" -> dense 10 / 5 / 2.5 PFLOP/s per GPU;
    # NVLink 130 TB/s -> 1.8 TB/s bidirectional = 900 GB/s per direction, one 72-GPU NVLink domain.
    "gb200-nvl72": Hardware(
        name="gb200-nvl72",
        hbm_bandwidth=8.0 * _T,
        hbm_capacity=186 * _G,
        flops={"bf16": 2500 * _T, "fp8": 5000 * _T, "fp4": 10000 * _T},
        link_bandwidth=900 * _G,
        link_latency=1.0 * _US,
        domain_size=72,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA GB200 NVL72 datasheet (rack totals / 72); NVLink 5 switch",
    ),
}
# NVLink latency (all presets): about 1 us per switch traversal + synchronisation for a one-shot
# collective over NVSwitch (NVLink hop latency is quoted at 1-2 us for NVLink 4; TensorRT-LLM's one-shot
# and multi-shot all-reduce use a single NVSwitch phase). Scale-out: 5 us (InfiniBand/RoCE, 1-5 us
# per message plus software). Both are assumptions; docs/planner.md shows how the result moves with them.

_HW_ALIASES = {"gb200": "gb200-nvl72", "nvl72": "gb200-nvl72", "gb200nvl72": "gb200-nvl72"}


def get_hardware(name: str) -> Hardware:
    key = name.lower().replace("_", "-")
    key = _HW_ALIASES.get(key, key)
    if key in HARDWARE_PRESETS:
        return HARDWARE_PRESETS[key]
    raise _unknown("hardware", name, HARDWARE_PRESETS)


def custom_hardware(
    bandwidth_gbs: float,
    tflops: float,
    link_bandwidth_gbs: float,
    link_latency_us: float,
    *,
    capacity_gb: float = 1e6,
    domain_size: int = 1 << 20,
    name: str = "custom",
    flops_per_precision: dict[str, float] | None = None,
    kernel_overhead_us: float = 0.0,
) -> Hardware:
    """Hardware given by hand: HBM (or DRAM) GB/s, TFLOP/s (the same for every precision unless
    ``flops_per_precision`` in TFLOP/s says otherwise), link GB/s per direction and latency in us.
    Capacity defaults to unlimited, every group to one domain (no scale-out tier), the fixed cost per
    kernel to 0 (pure roofline)."""
    if not bandwidth_gbs > 0:
        raise PlannerError(f"custom hardware: --bandwidth must be positive, got {bandwidth_gbs}")
    if not link_bandwidth_gbs > 0:
        raise PlannerError(f"custom hardware: --link-bandwidth must be positive, got {link_bandwidth_gbs}")
    if not tflops > 0:
        raise PlannerError(f"custom hardware: --flops must be positive, got {tflops}")
    flops = {p: tflops * _T for p in PRECISIONS}
    for p, v in (flops_per_precision or {}).items():
        if p not in PRECISIONS:
            raise _unknown("precision", p, PRECISIONS)
        flops[p] = v * _T
    return Hardware(
        name=name,
        hbm_bandwidth=bandwidth_gbs * _G,
        hbm_capacity=capacity_gb * _G,
        flops=flops,
        link_bandwidth=link_bandwidth_gbs * _G,
        link_latency=link_latency_us * _US,
        domain_size=domain_size,
        scaleout_bandwidth=link_bandwidth_gbs * _G,
        scaleout_latency=link_latency_us * _US,
        kernel_overhead=kernel_overhead_us * _US,
        usable_memory=1.0,
        source="given by hand",
    )
