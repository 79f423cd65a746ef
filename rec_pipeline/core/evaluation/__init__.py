"""Measuring whether the online loop pays off: ranking metrics, scoring lists on a slice of events
(`scoring`), the policies that are compared and the test-then-train loop they share (`policies`),
the replay of a historical log and the demo over simulated events, the simulator (the embedded
event source, with a ground-truth oracle) and the MovieLens loaders."""
