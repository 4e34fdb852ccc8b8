"""Byte and line protocols of the supported IMUs. No I/O here: bytes in, frozen messages out."""
