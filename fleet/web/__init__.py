"""The fleet's pictures and its open-data views: the offline map (map.py), plots (plot.py) and
the read-only HTTP service (app.py). Everything reads the store through its public functions."""
