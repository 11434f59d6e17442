"""Read the values back from an offline W&B run (`wandb/offline-run-*/run-<id>.wandb`).

wandb 0.31 writes offline runs only as a `.wandb` file: a 7-byte header (`:W&B`, a 2-byte magic,
a version byte) followed by a LevelDB-log framed stream in 32 KiB blocks. Each block holds
records with a 7-byte header (crc32 of type+payload, little-endian uint32; payload length,
uint16; type: 1 full, 2 first, 3 middle, 4 last); a block tail shorter than 7 bytes is padding.
Reassembled payloads are `wandb.proto.wandb_internal_pb2.Record` messages; history records hold
each logged key with its value as JSON (nested values under a key path).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

HEADER_SIZE = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
HEADER_IDENT = b":W&B"
BLOCK_SIZE = 32 * 1024  # LevelDB log block
RECORD_HEADER_SIZE = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | os.PathLike) -> list[bytes]:
    """The reassembled record payloads of a `.wandb` file, in order (crc checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"W&B run file not found: {path}")
    data = path.read_bytes()
    if len(data) < HEADER_SIZE or data[:4] != HEADER_IDENT:
        raise ValueError(f"{path}: not a W&B run file (missing the ':W&B' header)")
    payloads, pending = [], None
    pos = HEADER_SIZE
    while pos < len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < RECORD_HEADER_SIZE:
            pos += left_in_block  # block trailer padding
            continue
        if pos + RECORD_HEADER_SIZE > len(data):
            break
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER_SIZE])
        if crc == 0 and length == 0 and kind == 0:
            pos += left_in_block  # zero padding to the end of the block
            continue
        start = pos + RECORD_HEADER_SIZE
        chunk = data[start:start + length]
        if len(chunk) < length:
            break  # a run still being written: ignore the torn tail
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: checksum mismatch in the record at byte {pos}")
        pos = start + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise ValueError(f"{path}: record continuation without a start at byte {pos}")
            pending += chunk
            if kind == LAST:
                payloads.append(pending)
                pending = None
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")
    return payloads


def _set_path(row: dict, keys: list[str], value: object) -> None:
    for key in keys[:-1]:
        row = row.setdefault(key, {})
    row[keys[-1]] = value


def _items_to_dict(items) -> dict:  # noqa: ANN001 - protobuf repeated field
    row: dict = {}
    for item in items:
        keys = list(item.nested_key) if item.nested_key else [item.key]
        _set_path(row, keys, json.loads(item.value_json))
    return row


def read_records(path: str | os.PathLike) -> list:
    """Every `Record` protobuf message of a `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in iter_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_history(path: str | os.PathLike) -> list[dict]:
    """The logged history rows (each a dict key -> value, with `_step`), in order."""
    return [_items_to_dict(r.history.item) for r in read_records(path)
            if r.WhichOneof("record_type") == "history"]


def read_summary(path: str | os.PathLike) -> dict:
    """The run summary after all updates (later updates win, removals applied)."""
    summary: dict = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") != "summary":
            continue
        for key, value in _items_to_dict(record.summary.update).items():
            summary[key] = value
        for item in record.summary.remove:
            summary.pop(item.nested_key[0] if item.nested_key else item.key, None)
    return summary


def read_config(path: str | os.PathLike) -> dict:
    """The run config (the run record's config plus later config updates)."""
    config: dict = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else \
            record.config.update if kind == "config" else ()
        config.update(_items_to_dict(items))
    return config


def find_run_files(save_dir: str | os.PathLike) -> list[Path]:
    """The `.wandb` files under save_dir (`wandb/offline-run-*/run-*.wandb`), oldest first."""
    return sorted(Path(save_dir).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)


def history_column(rows: list[dict], key: str) -> list[tuple[int, object]]:
    """(_step, value) for each row that logged `key`."""
    return [(int(row.get("_step", i)), row[key]) for i, row in enumerate(rows) if key in row]


def run_is_complete(path: str | os.PathLike) -> bool:
    """True once the run file holds its `exit` record (wandb writes the file asynchronously:
    right after `finish()` the tail may still be on its way)."""
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in read_records(path))
    except (FileNotFoundError, ValueError):
        return False


def wait_for_run(path: str | os.PathLike, timeout_s: float = 30.0,
                 poll_s: float = 0.05) -> Path:
    """Block until `run_is_complete(path)` or raise TimeoutError naming the file."""
    import time

    deadline = time.monotonic() + timeout_s
    while not run_is_complete(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout_s} s (run not finished?)")
        time.sleep(poll_s)
    return Path(path)
