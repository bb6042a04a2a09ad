"""The wire: the HTTP client, the requests and answers as plain functions (sans-I/O), the records
and their conversion, the errors."""
