"""Conformance kit: cases as data, golden vectors with gradients, and checks of other implementations.

    mpt-ref vectors OUT_DIR      write the vectors (spec/vectors/ is the committed copy)
    mpt-ref verify ...           check a directory of another implementation's outputs, or an ONNX file
"""
