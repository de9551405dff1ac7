"""`lmgolf plot`: figures from the results store and run folders (docs/plots.md)."""

from __future__ import annotations

import json
from pathlib import Path

from lmgolf.errors import LmgolfError

GENERATION_FILE = "generation.json"  # the measured generation times, in the output folder, reused by later plots


def register(sub) -> None:
    from lmgolf.study.plotdata import BANDS, CURVE_X
    from lmgolf.study.plots import FORMATS, KINDS
    plot = sub.add_parser("plot", help="figures of a study from the results store: curves, params, flops, "
                                       "ablation, vocab (PNG and SVG; needs matplotlib)")
    plot.add_argument("study")
    plot.add_argument("--kind", default="all", choices=KINDS + ("all",), help="which figure (default all: every "
                      "one the study's runs can draw)")
    plot.add_argument("--out", required=True, help="the folder for KIND.png, KIND.svg and KIND.json")
    plot.add_argument("--db", default=None, help="the results database (default $LMGOLF_RESULTS, else "
                      "runs/results.sqlite)")
    plot.add_argument("--metric", default="val_bpb", help="the store metric to plot (default val_bpb)")
    plot.add_argument("--baseline", default=None, help="the arm the ablation bars start from, listed first")
    plot.add_argument("--x", default="step", choices=CURVE_X, help="curves: the x axis (default step)")
    plot.add_argument("--band", default="std", choices=BANDS, help="curves: the band over seeds, mean ± std or "
                      "min to max (default std)")
    plot.add_argument("--format", default="png,svg", help=f"comma-separated, of {', '.join(FORMATS)} (default both)")
    plot.add_argument("--measure-generation", action="store_true", help="vocab: time a greedy generation from the "
                      f"first run of each arm on this machine (saved as OUT/{GENERATION_FILE}, reused later)")
    plot.add_argument("--gen-tokens", type=int, default=256, help="tokens each timed generation samples (default 256)")
    plot.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where to time generation "
                      "(default cpu)")
    plot.set_defaults(func=cmd_plot)


def cmd_plot(args) -> None:
    from lmgolf.runfiles import atomic_write_text, read_json_object
    from lmgolf.study.plots import plot_study, require_matplotlib
    from lmgolf.study.store import Store
    require_matplotlib()  # before any measuring
    from lmgolf.study.store import default_path
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    db = Path(args.db or default_path())
    if not db.is_file():
        raise LmgolfError(f"{db}: no results database there (add runs with `lmgolf results add RUN --study "
                          f"{args.study} --db {db}`)")
    with Store(db) as store:
        rows = store.runs(args.study)
    if not rows:
        raise LmgolfError(f"plot: no runs in study {args.study!r} in {db} "
                          f"(add some with `lmgolf results add RUN --study {args.study}`)")
    out = Path(args.out)
    saved = out / GENERATION_FILE
    generation = None
    if args.measure_generation:
        if args.kind not in ("vocab", "all"):
            raise LmgolfError("plot: --measure-generation is for --kind vocab (or all)")
        if not 1 <= args.gen_tokens <= 16_384:
            raise LmgolfError(f"plot: --gen-tokens must lie in [1, 16384], got {args.gen_tokens}")
        from lmgolf.study.vocab_cost import measure_study
        generation = measure_study(rows, args.gen_tokens, args.device)
        atomic_write_text(saved, json.dumps(generation, indent=1) + "\n")
    elif saved.is_file():
        hashes = {r["path"]: r.get("config_hash") for r in rows}
        generation = {path: g for path, g in read_json_object(saved, "").items()
                      if isinstance(g, dict) and path in hashes and g.get("config_hash") == hashes[path]}
        if generation:
            print(f"generation times: {saved} (measured earlier; --measure-generation measures again)")
    written, skipped = plot_study(rows, args.study, args.kind, out, metric=args.metric, baseline=args.baseline,
                                  formats=formats, x=args.x, band=args.band, generation=generation)
    for kind, why in skipped.items():
        print(f"skipped {kind}: {why}")
    print(f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}")
