"""The paper-study layer: a synthetic web (`synth`), capacity sweeps (`sweep`), trivial baselines, the
Table-3-style report with its plots (`report`), and the offline end-to-end run that ties them together (`demo`)."""
