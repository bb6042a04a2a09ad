"""Short, complete programs, run by the test suite (test_examples.py, test_example_apps.py,
test_fastapi_example.py, test_browser.py). Each is one file that needs only the installed library;
this package exists so that the tests can import them."""
