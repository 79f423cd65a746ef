"""Getting behaviour events in: the event contract, the file readers and the contract as SQL
(`sources`, `normalize`), landing a file as one batch exactly once (`landing`), which files in the
landing folder are ready (`landing_folder`), the Great Expectations suite and anomaly checks
(`quality`), a batch's check outcomes and operator decisions (`batches`), the item catalogue and
writing event files."""
