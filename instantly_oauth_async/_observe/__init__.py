"""What the manager tells: its events (hooks) and its tally (stats, log records)."""
