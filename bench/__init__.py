"""Benchmarks of feedsvc on the native stack: one module per scenario, shared pieces beside them.

Run through `scripts/bench SCENARIO [--quick]` (`python -m bench`). Each scenario starts a
fresh stack, prints progress on stderr and, as its last line on stdout, one JSON object
(`bench.result`). Not shipped in the image; `./test.sh` never runs a scenario.
"""
