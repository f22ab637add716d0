"""Host-side layout of vision inputs (numpy only): from the arrays a Hugging Face processor
returns (or the data pipeline's per-row batch, `rope_vit_rows`) to the fixed-shape, per-row
arrays the jitted model reads.

The processor's arrays are flat over the batch: `pixel_values` `[patches, values]` (or
`[tiles, C, H, W]`) holds every image in row-major order of its placeholder tokens, with
`image_grid_thw` `[images, 3]` (videos alike). The model instead takes each text row's
visual inputs in that row, in order of appearance, padded to a fixed capacity, so the vision
tower is batched, sharded and masked like the text:

  rope_vit (Qwen3-VL), for rows `b` and patch slots `p < capacity`:
    vision_patches     float32 [B, P, C*t*p*p]  patches of the row's images/frames in order
    vision_segments    int32   [B, P]           attention segment: one per image frame, 0 = padding
    vision_hw          int32   [B, P, 2]        (row, column) of the patch, for 2D rotary positions
    vision_pos_index   int32   [B, P, 4]        learned-position rows to resample (bilinear taps)
    vision_pos_weight  float32 [B, P, 4]        and their weights
    rope_positions     int32   [B, T, 3]        (temporal, height, width) LM positions (MRoPE)
  cls_vit (InternVL):
    vision_pixels      float32 [B, N, C, H, W]  the row's image tiles in order, zero tiles after

Placeholder tokens pick their features by order: the k-th visual token of a row takes the
k-th merged feature of that row (`visual_token_index`), exactly as the processor's
placeholders and Hugging Face's masked scatter pair them. Packed rows (several documents,
`segment_ids`) restart the multimodal positions per document.
"""

from __future__ import annotations

import numpy as np

PAD_TAPS = 4  # bilinear: 2 x 2 taps per patch


def as_numpy(x, dtype=None):
  """numpy view of a numpy / jax / torch array (None stays None)."""
  if x is None:
    return None
  if hasattr(x, "detach"):  # a torch tensor, as `return_tensors="pt"` gives
    x = x.detach().cpu().numpy()
  return np.asarray(x) if dtype is None else np.asarray(x, dtype)


def visual_runs(ids: np.ndarray, token_ids: dict[int, str]) -> list[tuple[str, int, int]]:
  """Maximal runs of one placeholder token in a row: (kind, start, end)."""
  kinds = np.array([token_ids.get(int(t), "") for t in ids], dtype=object)
  runs, start = [], 0
  for i in range(1, len(ids) + 1):
    if i == len(ids) or kinds[i] != kinds[start]:
      if kinds[start]:
        runs.append((kinds[start], start, i))
      start = i
  return runs


# -- rope_vit ----------------------------------------------------------------------------------

def merge_order_hw(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, column) of each patch of one frame in the processor's order: merge windows in
  raster order, patches inside a window in raster order."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  shape = (h // merge, merge, w // merge, merge)
  return rows.reshape(shape).transpose(0, 2, 1, 3).ravel(), cols.reshape(shape).transpose(0, 2, 1, 3).ravel()


def bilinear_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
  """Taps and weights resampling a `side`-long learned axis to `size` positions
  (align_corners=True, edge clamped), in float32 as transformers computes them."""
  src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
  floor = np.floor(src)
  taps = floor.astype(np.int64)[:, None] + np.arange(2)
  distance = np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=np.float32))
  weights = np.clip(np.float32(1) - distance, 0, None).astype(np.float32)
  return np.clip(taps, 0, side - 1), weights


def patch_positions(t: int, h: int, w: int, merge: int, side: int):
  """Per patch of a (t, h, w) grid: (row, col) for the 2D rotary embedding, and the bilinear
  taps / weights into the learned `side x side` position grid."""
  rows, cols = merge_order_hw(h, w, merge)
  h_taps, h_w = bilinear_taps(rows, h, side)
  w_taps, w_w = bilinear_taps(cols, w, side)
  index = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, PAD_TAPS)
  weight = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, PAD_TAPS)
  hw = np.stack([rows, cols], axis=-1)
  return np.tile(hw, (t, 1)), np.tile(index, (t, 1)), np.tile(weight, (t, 1))


def mrope_positions(ids: np.ndarray, segments: np.ndarray, runs, grids: list[tuple[int, int, int]],
                    merge: int) -> np.ndarray:
  """`[T, 3]` multimodal positions of one row: per document, text advances all three rows by
  one per token; a visual run of grid (t, h, w) spans temporal t, height h / merge and width
  w / merge from the current position, which then moves by max(h, w) / merge. Padding
  (segment 0) is 0."""
  out = np.zeros((len(ids), 3), np.int64)
  for seg in np.unique(segments):
    if seg == 0:
      continue
    idx = np.nonzero(segments == seg)[0]  # the document's tokens, in order
    order = {tok: i for i, tok in enumerate(idx)}
    pos, at = 0, 0  # next position, next index into idx
    for (_, start, end), (t, h, w) in zip(runs, grids):
      if start not in order:
        continue
      first = order[start]
      out[idx[at:first]] = (pos + np.arange(first - at))[:, None]  # text before the run
      pos += first - at
      hh, ww = h // merge, w // merge
      tt, rr, cc = np.meshgrid(np.arange(t), np.arange(hh) + pos, np.arange(ww) + pos, indexing="ij")
      out[idx[first:first + end - start]] = np.stack([tt.ravel() + pos, rr.ravel(), cc.ravel()], axis=-1)
      pos += max(h, w) // merge
      at = first + end - start
    out[idx[at:]] = (pos + np.arange(len(idx) - at))[:, None]
  return out


def bucket(need: int, unit: int = 1) -> int:
  """`unit` times the next power of two of need / unit: few distinct shapes, so repeated calls
  with different images reuse compiled programs."""
  blocks = max(-(-need // unit), 1)
  return unit * (1 << (blocks - 1).bit_length())


def _grids(thw) -> list[tuple[int, int, int]]:
  return [] if thw is None else [tuple(int(v) for v in g) for g in as_numpy(thw).reshape(-1, 3)]


def rope_vit_inputs(vision, input_ids, segment_ids=None, *, pixel_values=None, image_grid_thw=None,
                    pixel_values_videos=None, video_grid_thw=None, capacity: int | None = None) -> dict:
  """The rope_vit model inputs (module docstring) for a batch; `capacity` None = the largest
  row's need, bucketed (`bucket`). Zero-patch grid rows (padding of a fixed-size `*_grid_thw`)
  are ignored."""
  ids = as_numpy(input_ids, np.int64)
  B, T = ids.shape
  segs = np.ones((B, T), np.int64) if segment_ids is None else as_numpy(segment_ids, np.int64)
  merge, D = vision.spatial_merge_size, vision.patch_dim
  side = int(round(vision.num_position_embeddings ** 0.5))
  sources = {}
  for kind, pixels, thw in (("image", pixel_values, image_grid_thw), ("video", pixel_values_videos, video_grid_thw)):
    grids = [g for g in _grids(thw) if g[0] * g[1] * g[2] > 0]
    pixels = np.zeros((0, D), np.float32) if pixels is None else as_numpy(pixels, np.float32).reshape(-1, D)
    starts = np.cumsum([0] + [t * h * w for t, h, w in grids])
    if starts[-1] > len(pixels):
      raise ValueError(f"pixel_values{'_videos' if kind == 'video' else ''}: {len(pixels)} patches for {kind} grids "
                       f"needing {starts[-1]}")
    for t, h, w in grids:
      if h % merge or w % merge:
        raise ValueError(f"{kind}_grid_thw {[t, h, w]}: height and width must be multiples of spatial_merge_size="
                         f"{merge}")
    sources[kind] = {"grids": grids, "starts": starts, "pixels": pixels, "next": 0, "frame": 0}
  token_ids = {vision.image_token_id: "image", vision.video_token_id: "video"}

  rows = []
  for b in range(B):
    runs = visual_runs(ids[b], token_ids)
    pieces, run_grids = [], []
    for kind, start, end in runs:
      if len(set(segs[b, start:end].tolist())) != 1:
        raise ValueError(f"row {b}: the {kind} placeholder tokens at {start}:{end} cross a document boundary")
      src = sources[kind]
      if src["next"] >= len(src["grids"]):
        raise ValueError(f"row {b}: {kind} placeholder tokens at {start}:{end} but only {len(src['grids'])} "
                         f"{kind}(s) in {kind}_grid_thw")
      t, h, w = src["grids"][src["next"]]
      per_frame = h * w
      if kind == "video":  # one run per frame (the processor separates frames by timestamps)
        frames = [src["frame"]]
        src["frame"] += 1
        run_grid = (1, h, w)
      else:
        frames = list(range(t))
        run_grid = (t, h, w)
      want = len(frames) * per_frame // merge ** 2
      if end - start != want:
        raise ValueError(f"row {b}: {end - start} {kind} placeholder tokens at {start}:{end}, but {kind} "
                         f"{src['next']} (grid {[t, h, w]}) needs {want}")
      base = src["starts"][src["next"]]
      hw, pidx, pw = patch_positions(1, h, w, merge, side)
      for f in frames:
        pieces.append((src["pixels"][base + f * per_frame: base + (f + 1) * per_frame], hw, pidx, pw))
      run_grids.append(run_grid)
      if kind == "image" or src["frame"] == t:
        src["next"] += 1
        src["frame"] = 0
    rows.append((pieces, mrope_positions(ids[b], segs[b], runs, run_grids, merge)))
  for kind, src in sources.items():
    if src["next"] != len(src["grids"]) or src["frame"]:
      raise ValueError(f"{len(src['grids'])} {kind}(s) in {kind}_grid_thw but placeholder tokens for "
                       f"{src['next']} (and {src['frame']} frames of the next)")

  need = max([sum(len(p[0]) for p in pieces) for pieces, _ in rows] + [0])
  P = bucket(need, merge ** 2) if capacity is None else capacity
  if need > P:
    raise ValueError(f"a row holds {need} vision patches, more than model.vision.row_capacity={P}")
  out = {"vision_patches": np.zeros((B, P, D), np.float32), "vision_segments": np.zeros((B, P), np.int32),
         "vision_hw": np.zeros((B, P, 2), np.int32), "vision_pos_index": np.zeros((B, P, PAD_TAPS), np.int32),
         "vision_pos_weight": np.zeros((B, P, PAD_TAPS), np.float32),
         "rope_positions": np.zeros((B, T, 3), np.int32)}
  for b, (pieces, positions) in enumerate(rows):
    at = 0
    for seg, (pix, hw, pidx, pw) in enumerate(pieces, start=1):
      n = len(pix)
      out["vision_patches"][b, at:at + n] = pix
      out["vision_segments"][b, at:at + n] = seg
      out["vision_hw"][b, at:at + n] = hw
      out["vision_pos_index"][b, at:at + n] = pidx
      out["vision_pos_weight"][b, at:at + n] = pw
      at += n
    out["rope_positions"][b] = positions
  return out


def rope_vit_rows(vision, pixel_values, pixel_segment_ids, vision_grid_thw, mrope_positions) -> dict:
  """The rope_vit model inputs from a batch already laid out per row (the data pipeline's
  contract, jaxtrain/data/vision/batch.py): patches stay where they are; each item (1-based
  `pixel_segment_ids`, grid `vision_grid_thw[b, item - 1]`) gets its 2D positions, taps and one
  attention segment per temporal patch."""
  seg = as_numpy(pixel_segment_ids, np.int64)
  grids = as_numpy(vision_grid_thw, np.int64)
  B, P = seg.shape
  merge = vision.spatial_merge_size
  side = int(round(vision.num_position_embeddings ** 0.5))
  out = {"vision_patches": as_numpy(pixel_values, np.float32).reshape(B, P, vision.patch_dim),
         "vision_segments": np.zeros((B, P), np.int32), "vision_hw": np.zeros((B, P, 2), np.int32),
         "vision_pos_index": np.zeros((B, P, PAD_TAPS), np.int32),
         "vision_pos_weight": np.zeros((B, P, PAD_TAPS), np.float32),
         "rope_positions": np.ascontiguousarray(as_numpy(mrope_positions, np.int32).transpose(0, 2, 1))}
  for b in range(B):
    next_segment = 1
    for item, (t, h, w) in enumerate(grids[b], start=1):
      if t * h * w == 0:
        continue
      slots = np.flatnonzero(seg[b] == item)
      if len(slots) != t * h * w or h % merge or w % merge:
        raise ValueError(f"row {b}, vision item {item}: {len(slots)} patches for grid {[t, h, w]} (spatial merge "
                         f"{merge})")
      hw, index, weight = patch_positions(t, h, w, merge, side)
      out["vision_hw"][b, slots], out["vision_pos_index"][b, slots] = hw, index
      out["vision_pos_weight"][b, slots] = weight
      out["vision_segments"][b, slots] = next_segment + np.repeat(np.arange(t), h * w)
      next_segment += t
  return out


# -- cls_vit -----------------------------------------------------------------------------------

def cls_vit_inputs(vision, input_ids, *, pixel_values=None, capacity: int | None = None) -> dict:
  """The cls_vit model inputs: each row's tiles, in order, from the flat `pixel_values`
  `[tiles, C, H, W]`; a row with k placeholder tokens takes k / tokens_per_tile tiles."""
  ids = as_numpy(input_ids, np.int64)
  B, _ = ids.shape
  C, S, per_tile = vision.in_channels, vision.image_size, vision.tokens_per_tile
  pixels = np.zeros((0, C, S, S), np.float32) if pixel_values is None else as_numpy(pixel_values, np.float32)
  if pixels.ndim != 4 or pixels.shape[1:] != (C, S, S):
    raise ValueError(f"pixel_values: shape {list(pixels.shape)}, expected [tiles, {C}, {S}, {S}] "
                     f"(model.vision.image_size={S})")
  counts = (ids == vision.image_token_id).sum(axis=1)
  bad = [b for b in range(B) if counts[b] % per_tile]
  if bad:
    raise ValueError(f"rows {bad}: image placeholder counts {counts[bad].tolist()} are not multiples of the "
                     f"{per_tile} tokens of one tile")
  tiles = counts // per_tile
  if tiles.sum() > len(pixels):
    raise ValueError(f"pixel_values: {len(pixels)} tiles for {int(tiles.sum())} tiles of placeholder tokens")
  N = bucket(int(tiles.max(initial=0))) if capacity is None else capacity
  if tiles.max(initial=0) > N:
    raise ValueError(f"a row holds {int(tiles.max())} image tiles, more than model.vision.row_capacity={N}")
  out = np.zeros((B, N, C, S, S), np.float32)
  starts = np.concatenate([[0], np.cumsum(tiles)])
  for b in range(B):
    out[b, :tiles[b]] = pixels[starts[b]:starts[b + 1]]
  return {"vision_pixels": out}


def default_capacity(vision, seq_len: int) -> int:
  """Per-row capacity when `row_capacity` is 0: what `seq_len` placeholder tokens could need."""
  if vision.row_capacity:
    return vision.row_capacity
  if vision.tower == "rope_vit":
    return seq_len * vision.spatial_merge_size ** 2
  return max(seq_len // vision.tokens_per_tile, 1)
