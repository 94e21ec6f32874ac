"""From a sweep's MLflow runs to plots and a report (reads MLflow only; never imports Ray).

load.load_sweep(...)  → Sweep: one tidy table of the trial runs + counts and notes
plots.make_plots(sweep) → figures (or the reason each one does not apply)
report.write_report(sweep, out_dir) → report.md, report.html, PNGs; logged to the parent run
cli.main(argv) → `pclc analyze` / `python -m analysis` (the `pclc` command itself lives in `sweeps.cli`)
"""
