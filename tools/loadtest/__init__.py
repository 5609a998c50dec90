"""s2s-loadtest: a headless load-test harness that drives a running gateway like the browser page does.

client.py runs one turn (POST /upload, then the SSE stream); runner.py schedules turns (closed-loop
concurrency, open-loop arrival rate, or a concurrency sweep); report.py turns the per-turn records
into statistics, report.json, turns.csv and plots; cli.py is the `s2s-loadtest` command.
"""
