"""Runtime adapters: small functions that run a model on one runtime. Imported lazily."""
