"""Record: a step's record, the columnar history and the ledger of the run."""
