"""Recipes and ``compress``: chain the verbs (prune → quantize → ...) with checkpoints and reports."""

from .compress import CompressResult, StepOutcome, compress
from .recipe import (
           BUILTIN,
           DEFAULT_RECIPE,
           Recipe,
           Step,
           builtin_recipes,
           check_chain,
           load_recipe,
           parse_recipe,
)

__all__ = ["BUILTIN", "DEFAULT_RECIPE", "CompressResult", "Recipe", "Step", "StepOutcome", "builtin_recipes",
           "check_chain", "compress", "load_recipe", "parse_recipe"]
