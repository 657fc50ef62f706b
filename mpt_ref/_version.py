"""The package version and the version of the spec (spec/) that the vectors and ONNX metadata carry."""

SPEC_VERSION = "0.1"
__version__ = "0.1.0"
# The PEFT release whose formats and semantics mpt-ref follows and is tested against: written as
# ``peft_version`` into the adapter_config.json of adapters mpt-ref saves (PEFT writes its own version).
PEFT_VERSION = "0.21.2"
