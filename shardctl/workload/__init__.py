"""Load generation and the ledger of acknowledged writes."""
