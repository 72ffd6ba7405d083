"""``openwan eval bench``: Wan-Bench / VBench-style dimensions scored on any set of generated videos."""
