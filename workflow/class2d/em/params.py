"""Classification parameters: CryoSPARC's names and defaults, from the ``classify:`` config.

    >>> params = ClassifyParams.from_config({"n_classes": 20}, apix=3.0, box=64)
    >>> params.force_max          # False: CryoSPARC turns it off for ≤ 20 classes
"""

from __future__ import annotations

import dataclasses
import math

from class2d.budget import DEFAULT_MEMORY_GB, estep_batch


#: copies of the class statistics (2 half sets of (zeropad · box)² complex128 + float64) an
#: E-step job holds at once: the state's, the batch's sum, one chunk's, their blend
CLASS_COPIES = 4


@dataclasses.dataclass(frozen=True)
class ClassifyParams:
    """Every knob of the classification (Å, degrees, px of the alignment box)."""

    n_classes: int = 50
    max_res_A: float = 6.0
    max_align_res_A: float = 0.0          # 0: = max_res_A
    min_align_res_A: float = 0.0          # 0: no high-pass
    start_res_A: float = 0.0              # 0: 4 × max_align_res_A (at least 25 Å)
    uncertainty_factor: float = 2.0
    force_max: bool | None = None         # None: True unless n_classes ≤ 20
    online_iterations: int = 20
    batch_per_class: int = 100
    final_full_iterations: int = 1
    hard_last_iteration: bool = False
    zeropad: int = 2
    mask_diameter_A: float = 0.0          # 0: 90 % of the box
    mask_edge_A: float = 0.0              # 0: 5 % of the box
    recenter: bool = True
    recenter_threshold: float = 0.2
    clamp_solvent: bool = False
    non_negative: bool = False
    per_particle_scale: bool = False
    white_noise: bool = False
    align_filaments_vertically: bool = False
    sort_classes: bool = True
    psi_step_deg: float = 0.0             # 0: from the particle size and resolution
    shift_range_A: float = 0.0            # 0: 10 % of the box
    shift_step_A: float = 0.0             # 0: a quarter of the alignment resolution, ≥ 1 px
    particle_diameter_A: float = 0.0      # 0: the mask diameter
    refill_duplicate_views: bool = False  # refill classes repeating a larger class's view
    local_shift_steps: int = 2            # a seen particle searches ±this many shift steps
    max_poses: int = 8                    # poses kept per particle and class when marginalising
    class_prune_margin: float = 20.0      # skip classes this far behind at low res (0: off)
    tau2_fudge: float = 2.0               # RELION's regularisation T
    batch_size: int = 2048                # particles per E-step chunk; 0: from memory_gb
    memory_gb: float = DEFAULT_MEMORY_GB  # GB a job may use (sets batch_size 0)
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict, seed: int = 0) -> "ClassifyParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown classify keys: {sorted(unknown)}")
        return cls(**{**section, "seed": seed})

    def estep_batch(self, box: int) -> int:
        """Particles per E-step chunk in a ``box``-px alignment box: ``batch_size``, or with
        0 what ``memory_gb`` holds besides the class statistics (at most 2048)."""
        if self.batch_size:
            return self.batch_size
        per_class = CLASS_COPIES * 2 * (self.zeropad * box) ** 2 * 24
        return estep_batch(self.memory_gb, box, fixed_bytes=self.n_classes * per_class)

    @property
    def use_force_max(self) -> bool:
        return self.n_classes > 20 if self.force_max is None else bool(self.force_max)

    @property
    def align_res_A(self) -> float:
        return self.max_align_res_A or self.max_res_A

    @property
    def first_res_A(self) -> float:
        return self.start_res_A or max(4.0 * self.align_res_A, 25.0)

    def resolution_at(self, iteration: int) -> float:
        """Alignment resolution (Å) of online iteration 1…n: rises linearly in 1/Å, reaching
        the maximum at 3/4 of the iterations; full passes use the maximum."""
        n = max(self.online_iterations, 1)
        frac = min(1.0, (iteration - 1) / max(1.0, 0.75 * n - 1)) if iteration <= n else 1.0
        lo, hi = 1.0 / self.first_res_A, 1.0 / self.align_res_A
        return 1.0 / (lo + frac * (hi - lo))

    def temperature_at(self, iteration: int) -> float:
        """Annealing temperature τ: the uncertainty factor at first, 1 from half-way on."""
        n = max(self.online_iterations, 1)
        frac = min(1.0, (iteration - 1) / max(1.0, 0.5 * n))
        return 1.0 + (max(self.uncertainty_factor, 1.0) - 1.0) * (1.0 - frac)

    def step_size_at(self, iteration: int) -> float:
        """Online-EM blend of new statistics (1 replaces, as in the first iteration)."""
        return 1.0 if iteration <= 1 else max(0.1, (iteration) ** -0.6)

    def mask_radius_px(self, box: int, apix: float) -> tuple[float, float]:
        """(radius, soft edge) of the class mask in px of the alignment box."""
        diameter = self.mask_diameter_A / apix if self.mask_diameter_A else 0.9 * box
        edge = self.mask_edge_A / apix if self.mask_edge_A else max(2.0, 0.05 * box)
        return min(diameter / 2, box / 2 - edge), edge

    def diameter_px(self, box: int, apix: float) -> float:
        if self.particle_diameter_A:
            return self.particle_diameter_A / apix
        return 2 * self.mask_radius_px(box, apix)[0]

    def psi_step(self, res_A: float, box: int, apix: float) -> float:
        """In-plane angle step in degrees at a resolution."""
        if self.psi_step_deg:
            return self.psi_step_deg
        radius_A = self.diameter_px(box, apix) * apix / 2
        step = math.degrees(res_A / radius_A)
        return 360.0 / math.ceil(360.0 / min(15.0, max(1.0, step)))

    def shift_grid(self, res_A: float, box: int, apix: float) -> tuple[int, float]:
        """(points per axis, step in px) of the shift search at a resolution."""
        step = (self.shift_step_A / apix) if self.shift_step_A else max(1.0, res_A / 4.0 / apix)
        extent = (self.shift_range_A / apix) if self.shift_range_A else 0.1 * box
        half = int(math.floor(extent / step + 1e-6))
        return 2 * half + 1, step
