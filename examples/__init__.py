"""Short, complete programs, run by the test suite (test_examples.py, test_browser.py)."""
