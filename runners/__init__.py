"""One job around the adapters (data, model, loop, resume, record, lock, memory) and, in
runners.analysis, the analysis of its records."""
