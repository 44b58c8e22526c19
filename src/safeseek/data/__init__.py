"""Scenario records: schemas, loading with validation, and encoding for training."""

from safeseek.data.encode import Encoded, PairEncoder, pad
from safeseek.data.records import SCHEMAS, data_hash, load_records, write_jsonl

__all__ = ["SCHEMAS", "Encoded", "PairEncoder", "data_hash", "load_records", "pad", "write_jsonl"]
