# The claims matrix of a sweep: every run's verdicts on every experiment's claims, runs x claims
# (laminae.stages.claims.run_claims_matrix). Made only for a sweep whose runs judge claims.
if PLAN.claims_matrix is not None:
    _matrix = PLAN.claims_matrix.dir

    rule claims_matrix:
        """Each run's claims.tsv -> the sweep's claims matrix."""
        input:
            tables=PLAN.claims_matrix.tables,
        output:
            png=report(f"{_matrix}/claims_matrix.png", caption="../report/claims_matrix.rst",
                       category="Sweep comparisons", labels={"experiment": "claims", "figure": "claims matrix",
                                                             "run": PLAN.claims_matrix.hash}),
            pdf=f"{_matrix}/claims_matrix.pdf",
            tsv=f"{_matrix}/claims_matrix.tsv",
            record=f"{_matrix}/sweep.yaml",
        log:
            f"{_matrix}/claims_matrix.log",
        params:
            stage=PLAN.claims_matrix_record(),
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../../envs/laminae.yaml"
        script:
            "../scripts/claims_matrix.py"
