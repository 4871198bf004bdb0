"""The generic stages every experiment goes through, one module each, called by the thin
scripts in workflow/scripts/:

    extract   model + inputs       -> activations/ (layer files of the union of the sites, rows.tsv,
                                      reductions of the experiments that run during extraction)
    analysis  activations + settings -> <experiment>/analysis-<h>/metrics/  (the experiment's hook)
    figures   metrics + plot keys  -> .../plot-<h>/figures/                (the experiment's hook)
    compare   the runs of a sweep  -> results/sweeps/<experiment>-<h>/

`runner` is the glue: logging to the rule's log file, progress bars, one-line user errors.
"""
