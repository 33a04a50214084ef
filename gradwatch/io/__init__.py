"""I/O: loggers, reading logs back, the report, summaries and the command line."""
