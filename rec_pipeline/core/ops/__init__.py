"""Running the pipeline for real: the warehouse file (migrations, lock retries, transactions),
failure records, alerts and housekeeping (`operations`), what `status` reports, pseudonymized user
ids and the right to be forgotten (`forgetting`)."""
