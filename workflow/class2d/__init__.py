"""class2d: cryo-EM 2D classification.

    >>> from class2d import io
    >>> table = io.read_particles("particles.star")
    >>> table.n
"""

__version__ = "0.1.0"
