"""karen-host: KAREN's plugin for local GGUF models served by a karen-host server.

KAREN's ExtensionLoader imports `handler.py` by file path and builds the class named
by the manifest's `entrypoint`; this file only marks the directory as a package (for
KAREN's PluginExecutionEngine, which imports `<package>.handler`) and imports nothing,
so that listing or validating the plugin never needs KAREN's runtime.
"""
