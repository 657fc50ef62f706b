"""Layer 1, the functional core: pure ``xxx_forward(...) -> (out, cache)`` / ``xxx_backward(dout, cache)``
pairs on NumPy arrays and PEFT-keyed params dicts. Imports only the foundation (errors, _types, ...)."""
