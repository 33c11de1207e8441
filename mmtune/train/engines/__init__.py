"""One module per engine, each exporting `ENGINE`; imported by name from train.engine.ENGINES."""
