"""Archive analysis: a season of recorder files through the streaming detector, resumably, on every core
(a process pool) or a Ray cluster."""
