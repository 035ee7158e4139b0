"""A plugin that fails at import."""

raise RuntimeError("this plugin is broken on purpose")
