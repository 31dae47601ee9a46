"""ospo: Owen-Shapley Policy Optimization on MLX."""

from ospo_mlx._blas import load_optimized_blas

# Must run before anything imports mlx.core (see _blas.py).
BLAS = load_optimized_blas()

__version__ = "0.1.0"

__all__ = ["BLAS", "__version__"]
