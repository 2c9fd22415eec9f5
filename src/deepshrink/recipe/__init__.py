"""Recipes (``steps``: YAML schema, step builders, built-ins) and ``compress`` (``runner``): chain the verbs (prune → quantize → ...) with checkpoints and reports."""

from .runner import CompressResult, StepOutcome, compress
from .steps import (
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
