"""Layer 4, PEFT interop: adapter directories to and from modules, modules built from files."""
