"""Conformance kit: cases as data, golden vectors with gradients, and checks of other implementations.

    mpt-ref vectors OUT_DIR      write the vectors (spec/vectors/ is the committed copy)
    mpt-ref verify ...           check a directory of another implementation's outputs, a port process
                                 (--exec), or an ONNX file
    mpt-ref conform --exec CMD   property-based conformance of a port process (spec/conform-protocol.md)
"""
