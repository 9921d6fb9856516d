"""`manage.py runserver` served by daphne (HTTP and websockets), without Twisted in any other process.

daphne's own app imports Twisted when Django starts, which cost every `make run` server 23 MB;
this app only names daphne's runserver command, imported when that command runs.
"""
