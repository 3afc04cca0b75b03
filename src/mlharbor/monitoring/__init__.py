"""Monitoring: prediction log, drift against the training profile, live performance, alerts.

Modules, one noun each (import them directly; nothing heavy loads with this package):

    reference    the profile stored with a version, read as per-feature bins
    statistics   PSI, Jensen-Shannon, KS, Wasserstein, chi-square on bin counts (vectorised)
    calibration  thresholds per window size, from the reference itself
    windows      per-window bin counts that merge by addition
    drift        DriftEngine and DriftReport
    logrows      PredictionRecord -> log rows, redaction
    journal      the bounded fsync'd buffer
    segments     where segments live (folder, S3) and how they are sealed
    predlog      PredictionLog: the sink serving writes to, and the column-wise reader
    feedback     labels joined with the log into live metrics
    estimation   performance estimated without labels (CBPE), with its stated error
    alerts       rules, the M-of-N state machine, history
    notify       webhooks (generic JSON, Slack)
    signals      the values rules are evaluated on; the evaluation loop
    promrules    the same rules for Prometheus
    report       self-contained HTML drift report
    service      building all of it from settings; Monitor, the facade
"""

__all__: list[str] = []
