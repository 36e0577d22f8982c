"""Studies that chose recipes, RDO settings and bit codings (results in lab/notes/)."""
