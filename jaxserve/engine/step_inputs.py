"""Host-side construction of one step's padded arrays (numpy only): tokens, attention metadata, sampling rows."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxserve.engine.scheduler import ScheduledBatch
from jaxserve.engine.sequence import Sequence
from jaxserve.sampling_params import MAX_LOGIT_BIAS

BANNED_IDS_WIDTH = 32  # EOS + stop_token_ids masked while below min_tokens; more are truncated


@dataclasses.dataclass
class StepInputs:
    """Everything one step sends to the device, as numpy arrays padded to the step's buckets."""

    tokens: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    block_tables: np.ndarray
    seq_lens: np.ndarray
    query_start_loc: np.ndarray
    logits_indices: np.ndarray
    num_rows_used: np.ndarray  # int32 [1]: sampling rows that are real (the rest pad the row bucket)
    sampling: dict[str, np.ndarray]
    sampled: list[bool]  # which sampling rows draw a token this step (prompt fully computed); forks follow seqs
    prompt_targets: np.ndarray | None = None  # next prompt token per packed token, when prompt logprobs are asked
    page_copies: np.ndarray | None = None  # [max_num_seqs, 2] (source, destination) pages, (0, 0) padded

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays under flat names (what a multi-host leader broadcasts); `sampled` stays with the host."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("sampling", "sampled") and getattr(self, f.name) is not None}
        arrays.update({f"sampling.{name}": value for name, value in self.sampling.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> StepInputs:
        """The inverse of `to_arrays` (with no `sampled` rows: a follower does not read results)."""
        sampling = {name.split(".", 1)[1]: value for name, value in arrays.items() if name.startswith("sampling.")}
        plain = {name: value for name, value in arrays.items() if not name.startswith("sampling.")}
        return cls(**plain, sampling=sampling, sampled=[])


def build_step_inputs(batch: ScheduledBatch, *, num_token_slots: int, num_rows: int, max_num_seqs: int,
                      table_width: int, block_size: int, full_sampler: bool, max_model_len: int,
                      eos_token_ids: tuple[int, ...]) -> StepInputs:
    """Pack the batch's new tokens into `num_token_slots` and its sequences into `num_rows` sampling rows.

    Sampling rows are the batch's sequences, then its forked siblings, each reading its parent's last hidden row.
    """
    tokens = np.zeros(num_token_slots, np.int32)
    positions = np.zeros(num_token_slots, np.int32)
    # Padding tokens write into the reserved page 0, one slot each, so they never touch a real page.
    slot_mapping = np.arange(num_token_slots, dtype=np.int32) % block_size
    block_tables = np.zeros((max_num_seqs, table_width), np.int32)
    seq_lens = np.zeros(max_num_seqs, np.int32)
    query_start_loc = np.full(max_num_seqs + 1, batch.num_tokens, np.int32)
    logits_indices = np.zeros(num_rows, np.int32)
    start = 0
    for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
        first = seq.num_computed_tokens
        pos = np.arange(first, first + n, dtype=np.int32)
        table = np.asarray(seq.block_table, np.int32)
        tokens[start:start + n] = seq.token_ids[first:first + n]
        positions[start:start + n] = pos
        slot_mapping[start:start + n] = table[pos // block_size] * block_size + pos % block_size
        block_tables[row, :len(table)] = table
        seq_lens[row] = first + n
        query_start_loc[row] = start
        start += n
        logits_indices[row] = start - 1
    sampled = [seq.num_computed_tokens + n == seq.num_tokens for seq, n in zip(batch.seqs, batch.num_new_tokens)]
    for j, (parent_row, _) in enumerate(batch.forks):
        logits_indices[len(batch.seqs) + j] = logits_indices[parent_row]
    sampled += [True] * len(batch.forks)
    rows = batch.seqs + [child for _, child in batch.forks]
    sampling = build_sampling_rows(rows, num_rows, full_sampler, max_model_len, eos_token_ids)
    page_copies = None
    if batch.copies:
        page_copies = np.zeros((max_num_seqs, 2), np.int32)  # (0, 0) copies the reserved page onto itself
        page_copies[:len(batch.copies)] = batch.copies
    num_rows_used = np.asarray([len(rows)], np.int32)
    return StepInputs(tokens, positions, slot_mapping, block_tables, seq_lens, query_start_loc, logits_indices,
                      num_rows_used, sampling, sampled, page_copies=page_copies)


def build_sampling_rows(seqs: list[Sequence], num_rows: int, full: bool, max_model_len: int,
                        eos_token_ids: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-row sampling parameters (padding rows are greedy and inert)."""
    f32 = np.float32
    rows = {
        "temperature": np.zeros(num_rows, f32), "top_p": np.ones(num_rows, f32),
        "top_k": np.zeros(num_rows, np.int32), "min_p": np.zeros(num_rows, f32),
        "presence_penalty": np.zeros(num_rows, f32), "frequency_penalty": np.zeros(num_rows, f32),
        "repetition_penalty": np.ones(num_rows, f32), "seed": np.zeros((num_rows, 3), np.uint32),
        "step": np.zeros(num_rows, np.int32), "num_prompt_tokens": np.zeros(num_rows, np.int32),
        "token_ids": np.full((num_rows, max_model_len if full else 0), -1, np.int32),
        "banned_ids": np.full((num_rows, BANNED_IDS_WIDTH if full else 0), -1, np.int32),
        "bias_ids": np.full((num_rows, MAX_LOGIT_BIAS if full else 0), -1, np.int32),
        "bias_values": np.zeros((num_rows, MAX_LOGIT_BIAS if full else 0), f32),
    }
    for row, seq in enumerate(seqs):
        p = seq.params
        rows["temperature"][row] = p.temperature
        rows["top_p"][row] = p.top_p
        rows["top_k"][row] = max(p.top_k, 0)
        rows["min_p"][row] = p.min_p
        rows["presence_penalty"][row] = p.presence_penalty
        rows["frequency_penalty"][row] = p.frequency_penalty
        rows["repetition_penalty"][row] = p.repetition_penalty
        rows["seed"][row] = (seq.seed & 0xFFFFFFFF, (seq.seed >> 32) & 0xFFFFFFFF, seq.sample_index)
        rows["step"][row] = seq.num_output_tokens
        rows["num_prompt_tokens"][row] = seq.num_prompt_tokens
        if full:
            rows["token_ids"][row, :seq.num_tokens] = seq.token_ids[:max_model_len]
            if seq.num_output_tokens < p.min_tokens:
                banned = list(dict.fromkeys((*eos_token_ids, *p.stop_token_ids)))[:BANNED_IDS_WIDTH]
                rows["banned_ids"][row, :len(banned)] = banned
            if p.logit_bias:
                rows["bias_ids"][row, :len(p.logit_bias)] = list(p.logit_bias)
                rows["bias_values"][row, :len(p.logit_bias)] = list(p.logit_bias.values())
    return rows
