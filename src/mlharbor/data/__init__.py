"""Data: load tables (CSV, Parquet, SQL), infer and check their schema, split and profile them."""
