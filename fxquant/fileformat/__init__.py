"""The ``.fxq`` file: container (layout, checksums), header (what it records), save/load."""
