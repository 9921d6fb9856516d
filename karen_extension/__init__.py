"""The KAREN plugin that talks to karen-host over HTTP (built in its own issue)."""
