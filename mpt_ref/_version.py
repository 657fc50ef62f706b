"""The package version and the version of the spec (spec/) that the vectors and ONNX metadata carry."""

SPEC_VERSION = "0.1"
__version__ = "0.1.0"
