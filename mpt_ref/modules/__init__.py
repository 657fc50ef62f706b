"""Layer 3, the PEFT-like modules: configs, init strategies and the classes over the functional core."""
