"""One module per `dt-eva` sub-command (thin: parse arguments, call the library, print a summary)."""
