"""The circles each stage draws on a box, all from one particle diameter.

    >>> from class2d import discs
    >>> discs.particle_radius_px(64, 3.0)              # 22.4: 70 % of the box, none given
    >>> discs.particle_radius_px(64, 3.0, 150.0)       # 25.0: a 150 Å particle
    >>> discs.mask_radius_px(64, 3.0)                  # (28.8, 3.2): class mask, soft edge
    >>> discs.normalisation_radius_px(64, 3.0)         # 24.0: 75 % of the box

The user gives the particle's diameter once, the config's top-level
``particle_diameter_A`` (0: 70 % of the box).  Every other circle keeps the proportion to
the particle that it has by default, when the particle fills 70 % of the box:

==================  ==============  =============================================================
circle              default, box    used by
==================  ==============  =============================================================
particle, d         70 %            ``select``'s automatic rule (signal disc), ``templates``
                                    (contrast of the density)
normalisation       75 % = 15/14·d  ``prepare``: mean and s.d. from the pixels outside it
                                    (RELION's default background circle)
class mask          90 % = 9/7·d    ``classify`` (masks the averages; its diameter sets the
                                    in-plane angle step, as RELION's ``--particle_diameter``);
                                    the background annulus of ``select`` and ``templates``;
                                    ``rebalance``'s comparison window
==================  ==============  =============================================================

The mask's soft edge (``classify.mask_edge_A``; default 5 % of the box, at least 2 px) lies
outside its radius, which is cut to the box less the edge.  Radii are in px of the box the
images are in (``apix`` Å/px); with no diameter given they depend on the box alone.
"""

from __future__ import annotations

from class2d.errors import ConfigError

#: the config key of the particle diameter, named in errors
KEY = "particle_diameter_A"
#: diameters of the circles as fractions of the box when no particle diameter is given;
#: a given diameter d sets them to d · fraction / PARTICLE_FRACTION
PARTICLE_FRACTION = 0.7
NORMALISATION_FRACTION = 0.75
MASK_FRACTION = 0.9
#: default soft edge of the mask: a share of the box, at least this many px
EDGE_FRACTION = 0.05
MIN_EDGE_PX = 2.0


def _diameter_px(fraction: float, box: int, apix: float, diameter_A: float) -> float:
    """Diameter (px) of the circle that is ``fraction`` of the box for the default particle."""
    if not diameter_A:
        return fraction * box
    return diameter_A / apix * (fraction / PARTICLE_FRACTION)


def particle_radius_px(box: int, apix: float, diameter_A: float = 0.0) -> float:
    """px: half the particle diameter ``diameter_A`` Å (0: 70 % of the box)."""
    return _diameter_px(PARTICLE_FRACTION, box, apix, diameter_A) / 2


def normalisation_radius_px(box: int, apix: float, diameter_A: float = 0.0) -> float:
    """px: the pixels outside this radius are the background images are normalised on."""
    return _diameter_px(NORMALISATION_FRACTION, box, apix, diameter_A) / 2


def mask_edge_px(box: int, apix: float, edge_A: float = 0.0) -> float:
    """px: width of the class mask's soft edge, ``edge_A`` Å (0: 5 % of the box, ≥ 2 px)."""
    return edge_A / apix if edge_A else max(MIN_EDGE_PX, EDGE_FRACTION * box)


def mask_radius_px(box: int, apix: float, diameter_A: float = 0.0,
                   edge_A: float = 0.0) -> tuple[float, float]:
    """(radius, soft edge) px of the class mask: 9/7 of the particle's radius (90 % of the
    box by default), cut to the box less the edge."""
    edge = mask_edge_px(box, apix, edge_A)
    radius = _diameter_px(MASK_FRACTION, box, apix, diameter_A) / 2
    return min(radius, box / 2 - edge), edge


def mask_diameter_A(diameter_A: float) -> float:
    """Å: the class mask's diameter for a particle ``diameter_A`` Å across, before any cut
    to the box (what RELION's ``--particle_diameter`` asks for)."""
    return _diameter_px(MASK_FRACTION, 0, 1.0, diameter_A)


def check_diameter(diameter_A: float, box: int, apix: float) -> None:
    """``ConfigError`` naming ``particle_diameter_A`` for a particle wider than the box."""
    if diameter_A and diameter_A > box * apix:
        raise ConfigError(KEY, f"{diameter_A:g} Å is wider than the {box * apix:g} Å box")
