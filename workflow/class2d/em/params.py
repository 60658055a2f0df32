"""Classification settings: CryoSPARC's names and defaults, and every value derived from them.

    >>> params = ClassifyParams.from_config({"n_classes": 20, "max_res_A": 6.0}, seed=0)
    >>> params.align_res_A        # 6.0: max_align_res_A, or max_res_A when that is 0
    >>> params.psi_step(params.align_res_A, box=64, apix=3.0)   # degrees, for this stack

Built once per job from the config's ``classify:`` section (``class2d.classify``; the
workflow's rules ask the same object for the alignment resolution that sets the prepared
box), then passed to every step.  A bad setting raises ``ConfigError`` naming its key.
The defaults here are ``config/schema.yaml``'s and ``config/config.yaml``'s (a test checks).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from class2d import discs
from class2d.errors import ConfigError, replaced_setting
from class2d.fourier import circular_mask

#: keys of the config's classify section that schedule workflow jobs, not the maths
WORKFLOW_KEYS = frozenset({"iterations_per_job"})

#: value checks beyond the type: key → (test, the problem when it fails)
_CHECKS = {
    "n_classes": (lambda v: v >= 1, "must be at least 1"),
    "max_res_A": (lambda v: v > 0, "must be > 0 Å"),
    "uncertainty_factor": (lambda v: v >= 1, "must be at least 1"),
    "online_iterations": (lambda v: v >= 0, "must be 0 or more"),
    "batch_per_class": (lambda v: v >= 1, "must be at least 1"),
    "final_full_iterations": (lambda v: v >= 1, "must be at least 1"),
    "zeropad": (lambda v: 1 <= v <= 4, "must be 1 to 4"),
    "recenter_threshold": (lambda v: 0 <= v <= 1, "must be between 0 and 1"),
    "max_poses": (lambda v: 1 <= v <= 32, "must be 1 to 32"),
    "tau2_fudge": (lambda v: v > 0, "must be > 0"),
    "batch_size": (lambda v: v == 0 or v >= 16, "must be 0 (from memory_gb) or at least 16"),
    "memory_gb": (lambda v: v > 0, "must be > 0 GB"),
    "local_shift_steps": (lambda v: v >= 0, "must be 0 or more"),
}
# settings in Å, degrees or log-units where 0 means automatic (or off)
_CHECKS.update({key: (lambda v: v >= 0, "must be 0 (automatic) or more") for key in (
    "max_align_res_A", "min_align_res_A", "start_res_A", "mask_edge_A",
    "psi_step_deg", "shift_range_A", "shift_step_A", "particle_diameter_A",
    "class_prune_margin")})
#: fields that are top-level config keys, handed to the classify steps
TOP_LEVEL_KEYS = frozenset({"memory_gb", "particle_diameter_A"})

from class2d.budget import DEFAULT_MEMORY_GB, estep_batch, split_sample


#: an online update takes at most this share of the particles: an iteration's batch larger
#: than that (``batch_per_class`` × classes against a small set) is taken in several steps
#: (``online_steps``), each scored against the classes the step before updated ...
UPDATE_SHARE = 0.25
#: ... each step holding at least this many particles per class
UPDATE_PER_CLASS = 30

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
    force_max: bool = True                # config.yaml: why not off at ≤ 20 classes
    online_iterations: int = 20
    batch_per_class: int = 100
    final_full_iterations: int = 1
    hard_last_iteration: bool = False
    zeropad: int = 2
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
    merge_twin_classes: bool = True       # refill, then merge, classes showing one object
    local_shift_steps: int = 2            # a seen particle searches ±this many shift steps
    max_poses: int = 8                    # poses kept per particle and class when marginalising
    class_prune_margin: float = 20.0      # skip classes this far behind at low res (0: off)
    tau2_fudge: float = 2.0               # RELION's regularisation T
    batch_size: int = 0                   # particles per E-step chunk; 0: from memory_gb
    memory_gb: float = DEFAULT_MEMORY_GB  # GB a job may use: the config's top-level memory_gb
    particle_diameter_A: float = 0.0      # Å, the config's top-level key; 0: from the box
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict, seed: int = 0) -> "ClassifyParams":
        """Settings from the config's classify section (workflow-only keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"seed"}
        unknown = sorted(set(section) - known - WORKFLOW_KEYS)
        if unknown:
            key = f"classify.{unknown[0]}"
            raise ConfigError(key, replaced_setting(key) or "unknown setting (a typo? every "
                              "setting is listed in config/config.yaml)")
        return cls(**{k: v for k, v in section.items() if k in known}, seed=seed)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.type.endswith("| None"):
                continue
            key = field.name if field.name in TOP_LEVEL_KEYS else f"classify.{field.name}"
            wanted = _type_problem(field.type.split(" | ")[0], value)
            if wanted:
                raise ConfigError(key, f"must be {wanted}, got {value!r}")
            test, problem = _CHECKS.get(field.name, (lambda v: True, ""))
            if not test(value):
                raise ConfigError(key, f"{problem}, got {value!r}")
        if self.min_align_res_A and self.min_align_res_A <= self.align_res_A:
            raise ConfigError("classify.min_align_res_A",
                              f"must be coarser (larger) than the alignment resolution "
                              f"{self.align_res_A:g} Å, got {self.min_align_res_A:g}")
        if self.min_align_res_A and self.start_res_A >= self.min_align_res_A:
            raise ConfigError("classify.start_res_A",
                              f"must be finer (smaller) than min_align_res_A "
                              f"{self.min_align_res_A:g} Å, got {self.start_res_A:g}")

    def check_particles(self, n: int, box: int, apix: float) -> None:
        """``ConfigError`` for settings that ``n`` particles of ``box`` px at ``apix`` Å/px
        cannot take: more classes than particles, a particle wider than the box."""
        if self.n_classes > n:
            raise ConfigError("classify.n_classes", f"{self.n_classes} classes for {n} "
                              f"particles: at most one class per particle")
        discs.check_diameter(self.particle_diameter_A, box, apix)

    def estep_batch(self, box: int) -> int:
        """Particles per E-step chunk in a ``box``-px alignment box: ``batch_size``, or with
        0 what ``memory_gb`` holds besides the class statistics (at most 2048)."""
        if self.batch_size:
            return self.batch_size
        return estep_batch(self.memory_gb, box, fixed_bytes=self._class_bytes(box))

    def _class_bytes(self, box: int) -> float:
        """Bytes of the class statistics a job holds beside its batches."""
        return self.n_classes * CLASS_COPIES * 2 * (self.zeropad * box) ** 2 * 24

    def split_sample(self, box: int) -> int:
        """Particles of a class whose images ``memory_gb`` holds at once beside the class
        statistics, for a split (``em.refill``)."""
        return split_sample(self.memory_gb, box, fixed_bytes=self._class_bytes(box))

    @property
    def align_res_A(self) -> float:
        """Å, the finest alignment resolution: max_align_res_A, or max_res_A when that is 0.
        The prepared stack is cropped to the smallest box that reaches it."""
        return self.max_align_res_A or self.max_res_A

    @property
    def first_res_A(self) -> float:
        """Å, the alignment resolution of the first online iteration: start_res_A, or 4 ×
        the alignment resolution (at least 25 Å) but no coarser than half the high-pass
        min_align_res_A, so that every iteration aligns on some frequencies."""
        if self.start_res_A:
            return self.start_res_A
        auto = max(4.0 * self.align_res_A, 25.0)
        if self.min_align_res_A:
            auto = max(self.align_res_A, min(auto, self.min_align_res_A / 2))
        return auto

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

    def online_steps(self, n_particles: int) -> int:
        """Updates an online iteration makes on ``n_particles``: 1, or where its batch is more
        than UPDATE_SHARE of them, as many as keep each under it, while each holds
        UPDATE_PER_CLASS particles per class.  On 3,000 particles an iteration's 2,000 make
        online EM nearly a full EM, which stays where its first iterations put it: three
        updates of 667 sorted 16 objects better on each of 10 runs, for the same
        particle-visits (60 iterations of 2,000 did about as well on the three runs tried, for
        three times the work; 20 of 600 did not: bench/RESULTS.md, stop 32)."""
        size = min(n_particles, self.batch_per_class * self.n_classes)
        steps = math.ceil(size / (UPDATE_SHARE * n_particles))
        return max(1, min(steps, size // (UPDATE_PER_CLASS * self.n_classes)))

    def step_size_at(self, iteration: int) -> float:
        """Online-EM blend of new statistics (1 replaces, as in the first iteration)."""
        return 1.0 if iteration <= 1 else max(0.1, (iteration) ** -0.6)

    def mask_radius_px(self, box: int, apix: float) -> tuple[float, float]:
        """(radius, soft edge) of the class mask in px of the alignment box
        (``discs.mask_radius_px``)."""
        return discs.mask_radius_px(box, apix, self.particle_diameter_A, self.mask_edge_A)

    def class_mask(self, box: int, apix: float) -> np.ndarray:
        """(box, box) float32 soft circular mask of the class averages."""
        return circular_mask(box, *self.mask_radius_px(box, apix))

    def mask_diameter_px(self, box: int, apix: float) -> float:
        """px: the diameter the angle step and the outlier statistics take, the class mask's
        (RELION's ``--particle_diameter`` is its mask's)."""
        return 2 * self.mask_radius_px(box, apix)[0]

    def psi_step(self, res_A: float, box: int, apix: float) -> float:
        """In-plane angle step in degrees at a resolution."""
        if self.psi_step_deg:
            return self.psi_step_deg
        radius_A = self.mask_diameter_px(box, apix) * apix / 2
        step = math.degrees(res_A / radius_A)
        return 360.0 / math.ceil(360.0 / min(15.0, max(1.0, step)))

    def shift_grid(self, res_A: float, box: int, apix: float) -> tuple[int, float]:
        """(points per axis, step in px) of the shift search at a resolution."""
        step = (self.shift_step_A / apix) if self.shift_step_A else max(1.0, res_A / 4.0 / apix)
        extent = (self.shift_range_A / apix) if self.shift_range_A else 0.1 * box
        half = int(math.floor(extent / step + 1e-6))
        return 2 * half + 1, step


def _type_problem(kind: str, value) -> str | None:
    """What a setting of type ``kind`` (bool, int, float) must be, when ``value`` is not."""
    if kind == "bool":
        return None if isinstance(value, bool) else "true or false"
    number = numbers.Integral if kind == "int" else numbers.Real
    if isinstance(value, bool) or not isinstance(value, number):
        return "an integer" if kind == "int" else "a number"
    return None
