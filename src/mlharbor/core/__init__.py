"""Vocabulary shared by every stage: references, records, signatures, errors, clock."""
