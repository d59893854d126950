"""The harness around the adapters: data, models, training, records, memory, tables."""
