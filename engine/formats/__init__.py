"""Reading fact files and rows into encoded relations, and writing relations out."""
