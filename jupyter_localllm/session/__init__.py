"""The session: the one batch pipeline every entry point runs through, its executors
(foreground, background jobs), the kernel's model manager, the result cache and progress
sinks. Imports the engine and the bottom helpers, never a front-end."""
