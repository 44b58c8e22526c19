"""Scenario records: loading with validation, and encoding for training."""

from safeseek.data.encode import Encoded, PairEncoder, pad
from safeseek.data.records import data_hash, load_records, write_jsonl

__all__ = ["Encoded", "PairEncoder", "data_hash", "load_records", "pad", "write_jsonl"]
