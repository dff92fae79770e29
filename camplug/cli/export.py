"""``camplug export RUN_DIR``: a finished audit's stored maps as overlay PNGs and/or one NPZ
file, without the model."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .options import UserError, fraction

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    export = commands.add_parser(
        "export", help="write an audit's stored maps as overlay PNGs or an NPZ file",
        description="Export the maps an audit stored (no model needed): --png DIR writes one "
        "overlay of the labelled class's map per audited sample (the plain map where the images "
        "cannot be opened again), --npz FILE the low-resolution maps with sample ids, labels, "
        "predictions and scores.")
    export.add_argument("run_dir", type=Path, help="the audit's output folder (--out)")
    export.add_argument("--run", dest="run_id",
                        help="run id (default: the latest run in the folder)")
    export.add_argument("--png", type=Path, help="folder for the overlay PNGs")
    export.add_argument("--npz", type=Path, help="file for the maps (numpy .npz)")
    export.add_argument("--alpha", type=fraction, default=0.5,
                        help="the map's weight in the overlay (default %(default)s)")
    export.add_argument("--colormap", default="jet",
                        help="a matplotlib colormap name (default %(default)s)")
    export.set_defaults(run=cmd_export)


def png_name(index: int, sample_id: str) -> str:
    """A file name for a sample's PNG: its index (unique) and its id (an image suffix dropped)
    made path-safe."""
    stem = re.sub(r"\.(png|jpe?g|bmp|gif|ppm|pgm|tiff?|webp)$", "", sample_id, flags=re.I)
    return f"{index:06d}_{SAFE_NAME.sub('_', stem).strip('._')[:80]}.png"


def _reopen(config: dict, stderr) -> object | None:
    """The run's dataset, opened again from its stored source when its content is unchanged;
    None (with the reason on ``stderr``) otherwise."""
    from camplug.audit.run import dataset_fingerprint
    from camplug.data.folders import open_dataset

    source = config.get("data_source")
    if source is None:
        print("export: the run did not record how to open its dataset: writing the maps alone",
              file=stderr)
        return None
    try:
        data = open_dataset(**source)
    except (ValueError, OSError) as error:
        print(f"export: cannot open the dataset again ({error}): writing the maps alone",
              file=stderr)
        return None
    if dataset_fingerprint(data) != config["dataset_fingerprint"]:
        print("export: the dataset changed since the run: writing the maps alone", file=stderr)
        return None
    return data


def cmd_export(args: argparse.Namespace) -> int:
    if args.png is None and args.npz is None:
        raise UserError("export: nothing to write; give --png DIR and/or --npz FILE")
    import numpy as np
    import torch

    from camplug.audit.run import DB_NAME
    from camplug.audit.scoring import input_maps
    from camplug.audit.store import MAP_CHANNELS, ResultStore

    db = args.run_dir / DB_NAME
    if not db.is_file():
        raise UserError(f"export: {args.run_dir} holds no audit results ({DB_NAME})")
    with ResultStore(db, read_only=True) as store:
        run = store.get_run(args.run_id) if args.run_id else (store.runs() or [None])[-1]
        if run is None:
            raise UserError(f"export: {db} holds no run {args.run_id or ''}".rstrip())
        rows = [r for r in store.rows(run.run_id, maps=True) if r.maps is not None]
    if not rows:
        raise UserError(f"export: run {run.run_id} stored no maps (no audited sample, or a "
                        "run from a camplug version that did not store maps)")
    if args.npz is not None:
        args.npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            args.npz, maps=np.stack([r.maps for r in rows]),
            sample_ids=np.array([r.sample_id for r in rows]),
            sample_index=np.array([r.sample_index for r in rows], dtype=np.int64),
            labels=np.array([r.label for r in rows], dtype=np.int64),
            predictions=np.array([r.prediction for r in rows], dtype=np.int64),
            scores=np.array([r.score for r in rows], dtype=np.float64),
            channels=np.array(MAP_CHANNELS))
        print(f"maps: {args.npz} ({len(rows)} samples, [C, h, w] = {list(rows[0].maps.shape)})")
    if args.png is not None:
        from PIL import Image

        from camplug.drawing import get_colormap, heatmap, overlay

        get_colormap(args.colormap)  # an unknown name fails before any work
        data = _reopen(run.config, sys.stderr)
        args.png.mkdir(parents=True, exist_ok=True)
        for row in rows:
            lowres = torch.from_numpy(row.maps[:1])
            if data is None:
                pixels = heatmap(input_maps(lowres, tuple(row.maps.shape[-2:]))[0].numpy(),
                                 colormap=args.colormap)
            else:
                rgb = data.rgb(row.sample_index)
                cam = input_maps(lowres, rgb.shape[:2])[0].numpy()
                pixels = overlay(rgb, cam, alpha=args.alpha, colormap=args.colormap)
            Image.fromarray(pixels).save(args.png / png_name(row.sample_index, row.sample_id))
        print(f"png: {args.png} ({len(rows)} files)")
    return 0
