"""The backtests: simulated histories replayed through the real stages and the loop's own judgement
(`replay`), canaries judged under noise (`canary`), and what they print and chart (`report`). The
one room besides the CLI that may import every other."""
