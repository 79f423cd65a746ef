import dagster as dg

# One partition per landed file: the key is the file's name in the landing folder.
event_batches = dg.DynamicPartitionsDefinition(name="event_batches")
