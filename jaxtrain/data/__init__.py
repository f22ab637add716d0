"""Data pipelines: sources -> format/tokenize -> pack -> batch -> per-process shard (Grain).

Output contract of every pipeline (see DESIGN.md): dicts of int32 numpy arrays
`[batch, seq_len]` named input_ids, target_ids, loss_mask, segment_ids (0 = padding),
positions.
"""
