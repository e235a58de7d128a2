"""AttentionMetadata: where each token of a step sits, and which pages each sequence owns.

One pytree per step, built on the host by the runner (numpy, padded to the step's bucket) and moved to the device
in the same transfer as the tokens. Field names follow vLLM.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    """Per-step attention inputs.

    Shapes, with T the token bucket and S = max_num_seqs (rows past the step's sequences are padding):
      slot_mapping    [T]      int32  page slot (block * block_size + offset) each new token's K/V is written to;
                                      padding tokens write to slot 0..block_size-1 of the reserved page 0
      block_tables    [S, M]   int32  pages of each sequence, M a multiple of the attention chunk in pages
      seq_lens        [S]      int32  tokens of each sequence after this step (0 for padding rows)
      query_start_loc [S + 1]  int32  offsets of each sequence's new tokens in the packed token array; padding
                                      rows repeat the total so the last entry is the number of real tokens
    """

    slot_mapping: jax.Array
    block_tables: jax.Array
    seq_lens: jax.Array
    query_start_loc: jax.Array

    @property
    def num_tokens(self) -> jax.Array:
        """Real (unpadded) tokens in this step."""
        return self.query_start_loc[-1]

    @property
    def query_lens(self) -> jax.Array:
        """New tokens of each sequence this step."""
        return self.query_start_loc[1:] - self.query_start_loc[:-1]

    @property
    def context_lens(self) -> jax.Array:
        """Tokens of each sequence already in the cache before this step."""
        return self.seq_lens - self.query_lens

    def token_to_seq(self, num_padded_tokens: int) -> jax.Array:
        """Row of the sequence each packed token belongs to (padding tokens get the last row)."""
        idx = jnp.searchsorted(self.query_start_loc[1:], jnp.arange(num_padded_tokens), side="right")
        return jnp.minimum(idx, self.seq_lens.shape[0] - 1).astype(jnp.int32)


jax.tree_util.register_dataclass(
    AttentionMetadata,
    data_fields=["slot_mapping", "block_tables", "seq_lens", "query_start_loc"],
    meta_fields=[],
)
