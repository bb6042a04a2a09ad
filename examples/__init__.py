"""Short, complete programs, run by the test suite (test_examples.py, test_example_apps.py,
test_fastapi_example.py, test_browser.py). Each needs only the installed library; the two web apps
(aiohttp_app.py, fastapi_app.py) share _shared.py (the sign-in stand-in, the pages, the manager
for a run). This package exists so that the tests can import them."""
