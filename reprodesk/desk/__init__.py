"""The desk: a local web page over the `Runs` service, and the watcher that feeds it.

A second front end beside the CLI: it renders what `Runs` returns and hands decisions
back to `Runs.resume`, the same call the CLI makes, under the same per-run lease. Run
logic lives in graphs/, not here.
"""
