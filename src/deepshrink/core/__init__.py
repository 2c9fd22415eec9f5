"""Core pieces every capability plugs into: configs, the handler registry, the model
handle, data sources and atomic file output."""
