"""Top-level test configuration shared by all test suites."""

import os

# Keep Ray quiet and local for every test run (must happen before Ray is imported anywhere).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
